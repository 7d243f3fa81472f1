"""One raw record and the accessors presets read it with: dotted paths, text, chat
messages, ids and meta, each failing with a :class:`~editalign.data.pair.DataError` that
names the row and field."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from editalign.data.pair import DataError, Prompt


class _Parts(NamedTuple):
    """What a preset's ``build`` makes of one row."""

    prompt: Prompt
    original: str
    revised: str
    meta: dict[str, Any]

# --------------------------------------------------------------------------- rows


_MISSING = object()


@dataclass(frozen=True)
class _Row:
    """One raw record and where it came from, for error messages."""

    record: Any
    source: str
    index: int
    line: int | None = None

    @property
    def where(self) -> str:
        return f"row {self.index}" + (f" (line {self.line})" if self.line is not None else "")

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, source=self.source, row=self.index, line=self.line,
                         field=field)


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    """The value at a column name or dotted path (``feedback.corrected-prediction``).

    A literal key wins, so flat CSV/Parquet headers that contain dots still work.
    Returns ``_MISSING`` when nothing is there.
    """
    if path in record:
        return record[path]
    head, dot, rest = path.partition(".")
    while dot:
        value = record.get(head, _MISSING)
        if isinstance(value, Mapping):
            found = _lookup(value, rest)
            if found is not _MISSING:
                return found
        step, dot, rest = rest.partition(".")
        head = f"{head}.{step}"
    return _MISSING


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _keys(mapping: Mapping[str, Any]) -> str:
    return ", ".join(repr(str(key)) for key in mapping) or "(none)"


def _get(row: _Row, fields: Mapping[str, str], role: str, *, required: bool = True) -> Any:
    """The raw value for ``role``; a missing required field lists the fields that exist."""
    path = fields[role]
    value = _lookup(row.record, path)
    if value is not _MISSING:
        _check_encodable(row, value, path)
        return value
    if not required:
        return None
    named = repr(path) + (f" (the {role})" if path != role else "")
    message = f"missing field {named}; this row has fields: {_keys(row.record)}"
    parent = path.rpartition(".")[0]
    if parent and isinstance(nested := _lookup(row.record, parent), Mapping):
        message += f"; {parent!r} has: {_keys(nested)}"
    raise row.error(message, field=path)


def _check_encodable(row: _Row, value: Any, path: str) -> None:
    """Refuse text UTF-8 cannot hold: JSON may carry unpaired surrogates (``"\\ud800"``), which
    a tokenizer, the request to a reviser or a written file would fail on much later."""
    stack = [(path, value)]
    while stack:  # iterative: a value may be nested as deep as the JSON parser allows
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise row.error(f"text with an unpaired surrogate ({item[exc.start]!r} at "
                                f"character {exc.start}), which is not valid Unicode text; "
                                "the writer of the file split a character", field=where) from None
        elif isinstance(item, Mapping):
            stack += [(f"{where}.{key}", key) for key in item if isinstance(key, str)]
            stack += [(f"{where}.{key}", sub) for key, sub in item.items()]
        elif isinstance(item, list | tuple):
            stack += [(f"{where}[{i}]", sub) for i, sub in enumerate(item)]


def _text(row: _Row, fields: Mapping[str, str], role: str, *,
          required: bool = True) -> str | None:
    """A string field; ``None`` only when an optional field is absent or null."""
    value = _get(row, fields, role, required=required)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise row.error(f"expected text (a string), got {_describe(value)}", field=fields[role])
    return value


def _messages(row: _Row, path: str, value: list[Any]) -> list[dict[str, str]]:
    """Validate chat messages and keep only ``role`` and ``content``.

    Extra keys (Parquet fills absent struct members with nulls) are dropped so a
    message list always has the one shape chat templates expect.
    """
    if not value:
        raise row.error("an empty list of chat messages (no prompt to render)", field=path)
    messages = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if not (isinstance(role, str) and role and isinstance(content, str)):
            raise row.error(
                "a chat message must be an object with string 'role' and 'content', "
                f"got {_describe(message)}", field=f"{path}[{i}]")
        messages.append({"role": role, "content": content})
    return messages


def _prompt(row: _Row, fields: Mapping[str, str], role: str = "prompt", *,
            required: bool = True) -> Prompt | None:
    """Prompt text, or a validated list of chat messages."""
    value = _get(row, fields, role, required=required)
    if value is None and not required:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(row, fields[role], value)
    raise row.error(f"expected text or a list of chat messages, got {_describe(value)}",
                    field=fields[role])


def _row_id(row: _Row, fields: Mapping[str, str], preset: str) -> str:
    """The row's own id (text or integer), else ``{preset}-{row index}``."""
    value = _get(row, fields, "id", required=False)
    if value is None or value == "":
        return f"{preset}-{row.index}"
    if isinstance(value, int | str) and not isinstance(value, bool):
        return str(value)
    raise row.error(f"expected an id (text or integer), got {_describe(value)}",
                    field=fields["id"])


def _meta(row: _Row, fields: Mapping[str, str]) -> dict[str, Any]:
    """An optional ``meta`` object; in CSV it may be written as a JSON object string."""
    value = _get(row, fields, "meta", required=False)
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    if not isinstance(value, Mapping):
        raise row.error(f"expected an object, got {_describe(value)}", field=fields["meta"])
    return dict(value)
