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

The pieces live by role: the pair type and its errors in :mod:`editalign.data.pair`, the
layouts in :mod:`editalign.data.presets`, the file readers in :mod:`editalign.data.readers`
and prompt rendering in :mod:`editalign.data.prompts`; this module loads, and re-exports
the public names (``from editalign.data.pairs import load_pairs, EditPair`` keeps working).

Supported files: ``.jsonl``, ``.json`` (a list, or ``{"data": [...]}``), ``.parquet``,
``.csv`` and directories written by ``datasets.Dataset.save_to_disk``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from editalign.data.pair import DataError, EditPair, LoadReport, Prompt
from editalign.data.presets import (
    FIELD_KEYS,
    PRESETS,
    Preset,
    detect_preset,
    parse_field_mapping,
    render_qa_prompt,
)
from editalign.data.readers import SUPPORTED_FORMATS, _read_rows
from editalign.data.rows import _MISSING, _describe, _keys, _lookup, _prompt, _Row, _row_id
from editalign.outputs import atomic_open

__all__ = ["FIELD_KEYS", "PRESETS", "SUPPORTED_FORMATS", "DataError", "EditPair", "LoadReport",
           "Preset", "Prompt", "detect_preset", "load_pairs", "load_prompts",
           "parse_field_mapping", "render_qa_prompt", "save_pairs_jsonl"]


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
        pairs: list[EditPair] = []
        seen: dict[str, str] = {}  # id -> where its row is
        for row in itertools.islice(stream, limit):
            pair = _accept(row, chosen, mapping, report, strict)
            if pair is None:
                continue
            if pair.id in seen:
                # Two rows with one id would be mixed up wherever pairs are matched by id
                # (annotate's items, resumes, reports): refused, never silently merged.
                raise row.error(f"id {pair.id!r} is also the id of {seen[pair.id]}; every "
                                "row needs its own id", field=mapping.get("id", "id"))
            seen[pair.id] = row.where
            pairs.append(pair)
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

    Parent directories are created. Returns the path written. The file is replaced whole
    (written beside it, then renamed), so a reader in another process never sees half of it.
    """
    path = Path(path)
    with atomic_open(path) as handle:  # a symlink keeps pointing at the new file
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
