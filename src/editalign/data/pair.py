"""The edit pair: a prompt, an ``original`` (worse) response and a ``revised`` one (the
original, minimally edited to be good), and the errors and report of reading them.

Every :class:`DataError` names the file, the row, the line where the format has lines, and
the field, because the person fixing the data needs to find the spot.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
