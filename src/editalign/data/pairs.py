"""Edit pairs: read minimal-edit data from files into one shape.

Everything downstream (token labels, FIGA, reward models, PPO) works on
:class:`EditPair`: a prompt, an ``original`` (worse) response and a ``revised`` response
(the original, minimally edited to be good). Real data comes in many layouts, so this
module maps them onto that shape with *presets* (named layouts) and *field mappings*
(``--field original=pred``), and it is strict about what it cannot read: every
:class:`DataError` names the file, the row, the line where the format has lines, and the
field, because the person fixing the data needs to find the spot. Rows that are readable
but useless (an empty response) are skipped and counted in a :class:`LoadReport`
instead, so one bad row does not stop a large data set; ``strict=True`` turns those
skips into errors.

Supported files: ``.jsonl``, ``.json`` (a list, or ``{"data": [...]}``), ``.parquet``,
``.csv`` and directories written by ``datasets.Dataset.save_to_disk``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import csv
import gzip
import io
import itertools
import json
import os
import re
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

Prompt = str | list[dict[str, str]]


@dataclass
class EditPair:
    """One minimal edit: ``revised`` is ``original`` after the smallest change that fixes it.

    ``prompt`` is plain text, or chat messages (``[{"role": ..., "content": ...}]``) so
    that chat data keeps its turns for the model's chat template. ``meta`` carries what
    a preset knows beyond the three texts (human error spans, a reference answer, or
    ``minimal_edit: False`` for ordinary preference pairs) and must stay JSON-serialisable.
    """

    prompt: Prompt
    original: str
    revised: str
    id: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_edit(self) -> bool:
        """False when the reviser left the original unchanged.

        Such pairs are kept (they say the original was already good) but yield no
        edited tokens, so label statistics must not count them as edits.
        """
        return self.original != self.revised

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, in the layout the ``default`` preset reads back."""
        return {
            "id": self.id,
            "prompt": copy.deepcopy(self.prompt),
            "original": self.original,
            "revised": self.revised,
            "meta": copy.deepcopy(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditPair:
        """Inverse of :meth:`to_dict` (for trusted data; use :func:`load_pairs` for files)."""
        return cls(
            prompt=copy.deepcopy(data["prompt"]),
            original=data["original"],
            revised=data["revised"],
            id=str(data["id"]),
            meta=copy.deepcopy(dict(data.get("meta") or {})),
        )


class DataError(ValueError):
    """Input that cannot be read as edit pairs.

    The message names the file, the row (0-based, counting data rows only), the 1-based
    line for line-based formats (JSONL, CSV) and the field, so the user can jump to the
    spot; the same parts are attributes for programs. A ``ValueError`` so that callers
    who validate arguments and data the same way can catch both at once.
    """

    def __init__(self, message: str, *, source: str, row: int | None = None,
                 line: int | None = None, field: str | None = None) -> None:
        self.source, self.row, self.line, self.field = source, row, line, field
        self.reason = message
        super().__init__(f"{source}{_location(row, line, field)}: {message}")


def _location(row: int | None, line: int | None, field: str | None) -> str:
    parts = []
    if row is not None:
        parts.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
    elif line is not None:
        parts.append(f"line {line}")
    if field is not None:
        parts.append(f"field {field!r}")
    return (": " + ", ".join(parts)) if parts else ""


@dataclass
class LoadReport:
    """What :func:`load_pairs` did with each row, so nothing is dropped silently.

    ``skipped`` counts rows left out by reason (``"empty original"``, ``"empty
    revised"``); ``examples`` lists the first few locations per reason (and for
    ``"no edit"``, the kept rows whose original equals the revised text) so the user can
    look at them. ``kept`` includes the ``no_edit`` pairs.
    """

    source: str
    preset: str
    rows_read: int = 0
    kept: int = 0
    no_edit: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    split: str | None = None

    max_examples = 3

    def note(self, reason: str, where: str) -> None:
        """Remember ``where`` as an example of ``reason`` (the first few only)."""
        found = self.examples.setdefault(reason, [])
        if len(found) < self.max_examples:
            found.append(where)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, for run logs."""
        return {
            "source": self.source,
            "preset": self.preset,
            "fields": dict(self.fields),
            "split": self.split,
            "rows_read": self.rows_read,
            "kept": self.kept,
            "no_edit": self.no_edit,
            "skipped": dict(self.skipped),
            "examples": {reason: list(where) for reason, where in self.examples.items()},
        }

    def summary(self) -> str:
        """A few lines for the terminal: what was read, kept and skipped, and why."""
        head = f"{self.source}: preset {self.preset!r}"
        if self.fields:
            head += ", fields " + " ".join(f"{k}={v}" for k, v in self.fields.items())
        if self.split is not None:
            head += f", split {self.split!r}"
        lines = [
            head,
            f"read {self.rows_read} rows, kept {self.kept} pairs ({self.no_edit} with no edit),"
            f" skipped {self.skipped.total()}",
        ]
        for reason, count in self.skipped.most_common():
            lines.append(f"  {reason}: {count} (e.g. {', '.join(self.examples.get(reason, []))})")
        return "\n".join(lines)


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
        return value
    if not required:
        return None
    named = repr(path) + (f" (the {role})" if path != role else "")
    message = f"missing field {named}; this row has fields: {_keys(row.record)}"
    parent = path.rpartition(".")[0]
    if parent and isinstance(nested := _lookup(row.record, parent), Mapping):
        message += f"; {parent!r} has: {_keys(nested)}"
    raise row.error(message, field=path)


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


# --------------------------------------------------------------------------- presets


class _Parts(NamedTuple):
    prompt: Prompt
    original: str
    revised: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class Preset:
    """A named data layout: which columns hold what, and how a row becomes a pair.

    ``fields`` maps every role the preset reads to its column (a dotted path reaches
    into nested objects); only the roles in ``mappable`` may be overridden with
    ``--field``. ``detect`` is the set of top-level columns that identify the layout.
    ``response_roles`` name the roles that become ``original`` and ``revised``, so that
    errors about them name the user's own columns.
    """

    name: str
    description: str
    fields: Mapping[str, str]
    mappable: frozenset[str]
    detect: frozenset[str]
    build: Callable[[_Row, Mapping[str, str]], _Parts]
    response_roles: tuple[str, str] = ("original", "revised")
    # A layout with files of its own (MLQE-PE archives): (path, source, split) -> rows, split.
    reader: Callable[[Path, str, str | None], tuple[Any, str | None]] | None = None


def _build_default(row: _Row, fields: Mapping[str, str]) -> _Parts:
    return _Parts(
        _prompt(row, fields),
        _text(row, fields, "original"),
        _text(row, fields, "revised"),
        _meta(row, fields),
    )


def _build_spa(row: _Row, fields: Mapping[str, str]) -> _Parts:
    """SPA layout: the instruction and its optional input form the prompt."""
    prompt = _text(row, fields, "prompt")
    extra = _text(row, fields, "input", required=False)
    if extra and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    reference = _text(row, fields, "reference", required=False)
    meta = {} if reference is None else {"reference": reference}
    return _Parts(prompt, _text(row, fields, "original"), _text(row, fields, "revised"), meta)


# ----- qa-feedback

_QA_ORIGINAL = "prediction 1"


def render_qa_prompt(question: str, passages: Sequence[Sequence[str]]) -> str:
    """The plain-text prompt of a QA-Feedback row: the question, then numbered passages.

    ``Question: ...`` then a blank line, ``Passages:`` and one line per passage,
    ``[i] title: sentence sentence ...`` with i counting from 1 like the data's
    ``missing-info`` passage ids. Many first sentences repeat the title as a header
    (``"Title\\n\\nText"``); that repeat is dropped. A row without passages gets only
    the question line.
    """
    if not passages:
        return f"Question: {question}"
    lines = [f"[{i}] {_render_passage(passage)}" for i, passage in enumerate(passages, 1)]
    return f"Question: {question}\n\nPassages:\n" + "\n".join(lines)


def _render_passage(passage: Sequence[str]) -> str:
    title, *sentences = passage
    if sentences and sentences[0].startswith(title + "\n\n"):
        sentences[0] = sentences[0][len(title) + 2:]
    text = " ".join(sentence.strip() for sentence in sentences)
    return f"{title}: {text}" if text else title


def _passages(row: _Row, fields: Mapping[str, str]) -> list[list[str]]:
    value = _get(row, fields, "passages", required=False) or []
    valid = isinstance(value, list) and all(
        isinstance(p, list) and p and all(isinstance(s, str) for s in p) for p in value)
    if not valid:
        raise row.error("expected a list of passages, each [title, sentence, ...] (strings), "
                        f"got {_describe(value)}", field=fields["passages"])
    return value


def _error_spans(row: _Row, fields: Mapping[str, str], original: str) -> list[dict[str, Any]]:
    """Human error spans, checked to lie inside the original they point into."""
    path = fields["error_spans"]
    value = _get(row, fields, "error_spans", required=False)
    if value is None:
        return []
    if not isinstance(value, list):
        raise row.error(f"expected a list of error spans, got {_describe(value)}", field=path)
    return [_error_span(row, f"{path}[{i}]", span, len(original))
            for i, span in enumerate(value)]


def _error_span(row: _Row, path: str, span: Any, length: int) -> dict[str, Any]:
    if not isinstance(span, Mapping):
        raise row.error(f"expected an error span object, got {_describe(span)}", field=path)
    start, end = span.get("start"), span.get("end")
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end))
    if not (ints and 0 <= start < end <= length):
        raise row.error(f"error span start={start!r} end={end!r} must satisfy "
                        f"0 <= start < end <= {length} (the length of the original)",
                        field=path)
    kind = span.get("error type", span.get("type"))
    return {"start": start, "end": end, "type": "" if kind is None else str(kind),
            "explanation": str(span.get("explanation") or "")}


def _build_qa_feedback(row: _Row, fields: Mapping[str, str]) -> _Parts:
    """QA-Feedback: human-corrected ``prediction 1`` plus the annotators' error spans.

    The spans are offsets into ``prediction 1``, so they are only kept when the
    original still comes from that column.
    """
    original = _text(row, fields, "original")
    prompt = render_qa_prompt(_text(row, fields, "prompt"), _passages(row, fields))
    spans = _error_spans(row, fields, original) if fields["original"] == _QA_ORIGINAL else []
    meta = {
        "source": "qa-feedback",
        "error_spans": spans,
        "missing_info": _get(row, fields, "missing_info", required=False) or [],
        "gold": _get(row, fields, "gold", required=False),
        "preference": _get(row, fields, "preference", required=False),
    }
    return _Parts(prompt, original, _text(row, fields, "revised"), meta)


# ----- preference

_ASSISTANT = "\n\nAssistant:"


def _strip_one_space(text: str) -> str:
    return text[1:] if text.startswith(" ") else text


def _common_prefix(a: str, b: str) -> str:
    end = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
               min(len(a), len(b)))
    return a[:end]


def _split_dialogues(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two whole dialogues into their shared prompt and the two last replies.

    The prompt runs to the end of the last ``"\\n\\nAssistant:"`` marker inside the
    common prefix (HH-RLHF's layout); each reply loses one leading space. Without such
    a marker, the common prefix is cut back to its last whitespace, so a word that only
    starts alike on both sides is not split.
    """
    shared = _common_prefix(chosen, rejected)
    cut = shared.rfind(_ASSISTANT)
    if cut >= 0:
        cut += len(_ASSISTANT)
        prompt = shared[:cut]
    else:
        cut = max((m.end() for m in re.finditer(r"\s", shared)), default=0)
        prompt = shared[:cut].rstrip()
    return prompt, _strip_one_space(chosen[cut:]), _strip_one_space(rejected[cut:])


def _response(row: _Row, fields: Mapping[str, str], role: str) -> str | list[dict[str, str]]:
    value = _get(row, fields, role)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(row, fields[role], value)
    raise row.error(f"expected text or a list of chat messages, got {_describe(value)}",
                    field=fields[role])


def _last_reply(row: _Row, path: str,
                messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    if not messages or messages[-1]["role"] != "assistant":
        raise row.error("the last message must be the assistant's reply", field=path)
    return messages[:-1], messages[-1]["content"]


def _split_conversations(row: _Row, fields: Mapping[str, str], prompt: Prompt | None,
                         chosen: list[dict[str, str]],
                         rejected: list[dict[str, str]]) -> tuple[Prompt, str, str]:
    """TRL's conversational layout: the last assistant messages are the responses.

    Without a prompt column the earlier messages, identical on both sides, are the
    prompt; with one, the responses must be the assistant messages alone.
    """
    chosen_context, chosen_reply = _last_reply(row, fields["chosen"], chosen)
    rejected_context, rejected_reply = _last_reply(row, fields["rejected"], rejected)
    if chosen_context != rejected_context:
        raise row.error("chosen and rejected differ before their last assistant message, so "
                        "they share no prompt", field=fields["rejected"])
    if prompt is None:
        return chosen_context, chosen_reply, rejected_reply
    if chosen_context:
        raise row.error("the row has a prompt, so chosen should hold only the assistant's "
                        "reply, but it has earlier messages too", field=fields["chosen"])
    return prompt, chosen_reply, rejected_reply


def _build_preference(row: _Row, fields: Mapping[str, str]) -> _Parts:
    """Preference pairs: the rejected reply is the original, the chosen one the revision.

    ``meta["minimal_edit"]`` is False because the two replies were written independently;
    edit-based labels on them mean much less than on a real minimal edit.
    """
    chosen, rejected = _response(row, fields, "chosen"), _response(row, fields, "rejected")
    prompt = _prompt(row, fields, required=False)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise row.error("chosen and rejected must both be text or both be message lists",
                        field=fields["rejected"])
    if isinstance(chosen, list):
        prompt, chosen, rejected = _split_conversations(row, fields, prompt, chosen, rejected)
    elif prompt is None:
        prompt, chosen, rejected = _split_dialogues(chosen, rejected)
    return _Parts(prompt, rejected, chosen, {"minimal_edit": False})


_EDIT_KEYS = frozenset({"prompt", "original", "revised", "id"})

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="default",
            description="prompt, original, revised, optional id and meta (editalign's own layout)",
            fields={"prompt": "prompt", "original": "original", "revised": "revised",
                    "id": "id", "meta": "meta"},
            mappable=_EDIT_KEYS | {"meta"},
            detect=frozenset({"original", "revised"}),
            build=_build_default,
        ),
        Preset(
            name="spa",
            description="instruction (+ input), original_output, revised_output, output kept as "
                        "meta.reference",
            fields={"prompt": "instruction", "input": "input", "original": "original_output",
                    "revised": "revised_output", "reference": "output", "id": "id"},
            mappable=_EDIT_KEYS,
            detect=frozenset({"instruction", "original_output", "revised_output"}),
            build=_build_spa,
        ),
        Preset(
            name="qa-feedback",
            description="QA-Feedback: question + passages, prediction 1, "
                        "feedback.corrected-prediction, error spans in meta",
            fields={"prompt": "question", "passages": "passages", "original": _QA_ORIGINAL,
                    "revised": "feedback.corrected-prediction", "id": "id",
                    "error_spans": "feedback.errors", "missing_info": "feedback.missing-info",
                    "gold": "gold", "preference": "preference"},
            mappable=_EDIT_KEYS,
            detect=frozenset({"question", _QA_ORIGINAL, "feedback"}),
            build=_build_qa_feedback,
        ),
        Preset(
            name="preference",
            description="chosen/rejected (text or chat messages), optional prompt; rejected "
                        "becomes the original, chosen the revised",
            fields={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "id": "id"},
            mappable=frozenset({"prompt", "chosen", "rejected", "id"}),
            detect=frozenset({"chosen", "rejected"}),
            build=_build_preference,
            response_roles=("rejected", "chosen"),
        ),
    )
}

FIELD_KEYS = ("prompt", "original", "revised", "id", "meta", "chosen", "rejected")


def parse_field_mapping(items: Sequence[str]) -> dict[str, str]:
    """Parse command-line ``KEY=COLUMN`` items (``prompt=question``) into a mapping.

    COLUMN may be a dotted path into nested objects. Errors name the offending item.
    Mixing ``original``/``revised`` with ``chosen``/``rejected`` is refused because
    those belong to different presets and the result would be ambiguous.
    """
    mapping: dict[str, str] = {}
    for item in items:
        key, sep, column = (part.strip() for part in item.partition("="))
        if not (sep and key and column):
            raise ValueError(f"bad --field {item!r}: expected KEY=COLUMN, e.g. prompt=question")
        if key not in FIELD_KEYS:
            raise ValueError(f"bad --field {item!r}: unknown key {key!r}; "
                             f"allowed: {', '.join(FIELD_KEYS)}")
        if key in mapping:
            raise ValueError(f"bad --field {item!r}: {key!r} is already mapped to "
                             f"{mapping[key]!r}")
        mapping[key] = column
    if mapping.keys() & {"original", "revised", "meta"} and mapping.keys() & {"chosen",
                                                                             "rejected"}:
        raise ValueError("--field cannot mix original/revised with chosen/rejected: the first "
                         "pair is for edit data, the second for preference data")
    return mapping


def detect_preset(columns: Iterable[str]) -> str | None:
    """The first preset whose identifying columns are all present, else None.

    Checked in the order of :data:`PRESETS`, so a file with both ``original``/``revised``
    and ``chosen``/``rejected`` is read as edit data.
    """
    present = set(columns)
    return next((name for name, preset in PRESETS.items() if preset.detect <= present), None)


# --------------------------------------------------------------------------- readers

# Readers are generators so that load_pairs can close the file when ``limit`` stops early.
_Rows = Generator[_Row, None, None]


def _utf8_error(source: str, data: bytes, exc: UnicodeDecodeError,
                first_line: int = 1) -> DataError:
    line = first_line + data.count(b"\n", 0, exc.start)
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return DataError(f"not valid UTF-8 at line {line}, byte {column} of that line "
                     f"({exc.reason}); save the file as UTF-8", source=source)


def _open_binary(path: Path) -> IO[bytes]:
    """Plain or gzip-compressed (``.jsonl.gz``, ``.json.gz``, ``.csv.gz``)."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def _decode_file(path: Path, source: str) -> str:
    with _open_binary(path) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _utf8_error(source, data, exc) from None


def _read_jsonl(path: Path, source: str) -> _Rows:
    """One JSON value per line, read line by line so errors can name the line."""
    index = 0
    with _open_binary(path) as handle:
        for line, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise _utf8_error(source, raw, exc, first_line=line) from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}",
                                source=source, row=index, line=line) from None
            yield _Row(record, source, index, line)
            index += 1


def _json_records(data: Any, source: str) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) == 1:
            return lists[0]
        found = f"an object with keys {_keys(data)}"
    else:
        found = _describe(data)
    raise DataError("expected a list of objects, or an object with one list-valued key such "
                    f'as {{"data": [...]}}; found {found}', source=source)


def _read_json(path: Path, source: str) -> _Rows:
    try:
        data = json.loads(_decode_file(path, source))
    except json.JSONDecodeError as exc:
        hint = ("; if the file holds one object per line, name it .jsonl"
                if exc.msg == "Extra data" else "")
        raise DataError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}{hint}", source=source) from None
    for index, record in enumerate(_json_records(data, source)):
        yield _Row(record, source, index)


def _read_csv(path: Path, source: str) -> _Rows:
    """CSV with a header row; a row's line is the line its record starts on."""
    reader = csv.DictReader(io.StringIO(_decode_file(path, source), newline=""))
    end = 0
    try:
        if reader.fieldnames is not None:
            end = reader.line_num
        for index, record in enumerate(reader):
            row = _Row(record, source, index, end + 1)
            end = reader.line_num
            if None in record:
                raise row.error(f"the row has {len(record[None])} more cells than the header "
                                "has columns")
            yield row
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", source=source, line=reader.line_num) from None


def _read_parquet(path: Path, source: str) -> _Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        records = itertools.chain.from_iterable(batch.to_pylist() for batch in batches)
        yield from (_Row(record, source, index) for index, record in enumerate(records))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read as Parquet: {exc}", source=source) from None


def _load_dataset_dir(path: Path, source: str, split: str | None) -> tuple[Any, str | None]:
    """A ``save_to_disk`` directory; a DatasetDict picks ``split`` (default "train")."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError("the directory is not a data set saved with "
                        f"datasets' save_to_disk ({exc})", source=source) from None
    if not isinstance(loaded, datasets.DatasetDict):
        if split is not None:
            raise DataError(f"split {split!r} was given, but the directory holds a single "
                            "Dataset, which has no splits", source=source)
        return loaded, None
    if split is None and "train" not in loaded:
        raise DataError("no split was given and there is no 'train'; choose a split from: "
                        f"{', '.join(loaded)}", source=source)
    split = "train" if split is None else split
    if split not in loaded:
        raise DataError(f"there is no split {split!r}; choose a split from: "
                        f"{', '.join(loaded)}", source=source)
    return loaded[split], split


_READERS: dict[str, Callable[[Path, str], _Rows]] = {
    ".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv,
}
SUPPORTED_FORMATS = (*_READERS, ".jsonl.gz", ".json.gz", ".csv.gz")


def _read_rows(path: Path, source: str, split: str | None) -> tuple[_Rows, str | None]:
    """Rows from any supported format, and the split used (dataset directories only)."""
    if path.is_dir():
        dataset, split = _load_dataset_dir(path, source, split)
        named = source if split is None else f"{source} (split {split})"
        return (_Row(record, named, index) for index, record in enumerate(dataset)), split
    if not path.exists():
        raise DataError("no such file or directory", source=source)
    if split is not None:
        raise DataError(f"split {split!r} applies only to a directory saved with "
                        "save_to_disk", source=source)
    suffixes = [suffix.lower() for suffix in path.suffixes[-2:]]
    if suffixes[-1:] == [".gz"] and suffixes[0] in (".jsonl", ".json", ".csv"):
        reader: Callable[[Path, str], _Rows] | None = _READERS[suffixes[0]]
    else:
        reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type {path.suffix or '(no extension)'!r}; "
                        f"supported: {', '.join(SUPPORTED_FORMATS)}, or a directory saved "
                        "with datasets' save_to_disk", source=source)
    return reader(path, source), None


# --------------------------------------------------------------------------- loading


def _choose_preset(preset: str | None, fields: Mapping[str, str],
                   first: _Row | None, source: str) -> Preset:
    """The named preset; else, with a mapping, default/preference; else detection."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
        return PRESETS[preset]
    if fields:
        return PRESETS["preference" if fields.keys() & {"chosen", "rejected"} else "default"]
    if first is None:
        raise DataError("there are no rows, so no preset can be detected; pass a preset",
                        source=source)
    _check_object(first)
    detected = detect_preset(first.record)
    if detected is None:
        raise first.error(f"cannot tell the layout from the columns {_keys(first.record)}; "
                          f"pass --preset ({', '.join(PRESETS)}) or map the columns with "
                          "--field prompt=COLUMN --field original=COLUMN --field revised=COLUMN")
    return PRESETS[detected]


def _merge_fields(preset: Preset, fields: Mapping[str, str]) -> dict[str, str]:
    unknown = [key for key in fields if key not in preset.mappable]
    if unknown:
        raise ValueError(f"preset {preset.name!r} cannot map {', '.join(unknown)}; "
                         f"it maps: {', '.join(sorted(preset.mappable))}")
    empty = [key for key, column in fields.items() if not column]
    if empty:
        raise ValueError(f"empty column name for {', '.join(empty)}")
    return {**preset.fields, **fields}


def _check_object(row: _Row) -> None:
    if not isinstance(row.record, Mapping):
        raise row.error(f"expected an object with named fields, got {_describe(row.record)}")


def _make_pair(row: _Row, preset: Preset, fields: Mapping[str, str]) -> EditPair:
    _check_object(row)
    parts = preset.build(row, fields)
    return EditPair(prompt=parts.prompt, original=parts.original, revised=parts.revised,
                    id=_row_id(row, fields, preset.name), meta=parts.meta)


def _skip_reason(pair: EditPair, preset: Preset) -> tuple[str, str] | None:
    """Why a pair is unusable (and the role to blame), or None."""
    if not pair.original.strip():
        return "empty original", preset.response_roles[0]
    if not pair.revised.strip():
        return "empty revised", preset.response_roles[1]
    return None


def load_pairs(source: str | os.PathLike[str], *, preset: str | None = None,
               fields: Mapping[str, str] | None = None, strict: bool = False,
               split: str | None = None,
               limit: int | None = None) -> tuple[list[EditPair], LoadReport]:
    """Read edit pairs from a file or saved data set, with a report of what happened.

    ``preset`` names a layout (see :data:`PRESETS`); ``fields`` maps roles to columns
    (dotted paths reach into nested objects) and overrides single fields of the preset.
    With neither, the layout is detected from the first row's columns; with only
    ``fields``, the ``default`` preset is used (``preference`` if chosen/rejected are
    mapped). Rows with an empty or whitespace-only response are skipped and counted
    (``strict=True`` raises instead); pairs whose original equals the revised text are
    kept and counted as ``no_edit``. ``split`` picks a split of a saved DatasetDict.
    ``limit`` stops after that many rows have been read (not kept).

    Raises :class:`DataError` for unreadable data and ``ValueError`` for bad arguments.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    name = os.fspath(source)
    reader = PRESETS[preset].reader if preset in PRESETS else None
    rows, split = (reader or _read_rows)(Path(name), name, split)
    with contextlib.closing(rows):
        first = next(rows, None)
        chosen = _choose_preset(preset, fields or {}, first, name)
        mapping = _merge_fields(chosen, fields or {})
        report = LoadReport(source=name, preset=chosen.name, fields=dict(fields or {}),
                            split=split)
        stream = rows if first is None else itertools.chain([first], rows)
        pairs = [pair for row in itertools.islice(stream, limit)
                 if (pair := _accept(row, chosen, mapping, report, strict)) is not None]
    return pairs, report


def _accept(row: _Row, preset: Preset, fields: Mapping[str, str], report: LoadReport,
            strict: bool) -> EditPair | None:
    """Build one pair and count it in ``report``; None when it is skipped."""
    report.rows_read += 1
    pair = _make_pair(row, preset, fields)
    skip = _skip_reason(pair, preset)
    if skip is not None:
        reason, role = skip
        if strict:
            raise row.error(f"{reason}: the text is empty or whitespace only (strict mode "
                            "refuses rows that would otherwise be skipped)", field=fields[role])
        report.skipped[reason] += 1
        report.note(reason, row.where)
        return None
    report.kept += 1
    if not pair.has_edit:
        report.no_edit += 1
        report.note("no edit", row.where)
    return pair


def save_pairs_jsonl(pairs: Iterable[EditPair], path: str | os.PathLike[str]) -> Path:
    """Write pairs as UTF-8 JSONL that :func:`load_pairs` reads back (``default`` preset).

    Parent directories are created. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair.to_dict(), ensure_ascii=False) + "\n")
    return path


def load_prompts(source: str | os.PathLike[str], *, field: str = "prompt",
                 split: str | None = None,
                 limit: int | None = None) -> list[str | list[dict[str, str]]]:
    """Prompts alone (for sampling: PPO, win-rate evaluation), from any supported format.

    Rows with a ``field`` column (a dotted path works) give that prompt, as text or chat
    messages; otherwise the rows are read as pairs (any preset) and their prompts are used.
    """
    name = os.fspath(source)
    rows, _ = _read_rows(Path(name), name, split)
    with contextlib.closing(rows):
        first = next(rows, None)
        if first is None:
            return []
        _check_object(first)
        if _lookup(first.record, field) is _MISSING:
            rows.close()
            return [pair.prompt for pair in load_pairs(source, split=split, limit=limit)[0]]
        prompts: list[str | list[dict[str, str]]] = []
        for row in itertools.islice(itertools.chain([first], rows), limit):
            _check_object(row)
            prompt = _prompt(row, {"prompt": field})
            assert prompt is not None  # required=True raises instead
            prompts.append(prompt)
        return prompts


# The mlqe-pe preset lives in its own module and adds itself to PRESETS on import.
import editalign.data.mlqe  # noqa: E402, F401
