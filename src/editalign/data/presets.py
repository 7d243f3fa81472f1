"""Presets: named data layouts (editalign's own, SPA, QA-Feedback, preference data) and
how a row of each becomes an :class:`~editalign.data.pair.EditPair`; ``--field`` mappings.

A new layout is a ``_build_*`` function and a row of :data:`PRESETS` (docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editalign.data import mlqe
from editalign.data.pair import Prompt
from editalign.data.rows import (
    _describe,
    _get,
    _meta,
    _Parts,
    _prompt,
    _Row,
    _text,
)

# --------------------------------------------------------------------------- presets


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
    """A chosen/rejected response: text or chat messages, read and checked as a prompt is."""
    value = _prompt(row, fields, role)
    assert value is not None  # required=True raises instead
    return value


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
        Preset(
            name="mlqe-pe",
            description="MLQE-PE post-edits (PAIR-SPLIT.tar.gz or its folder): translation "
                        "prompt with the source, MT as original, post-edit as revised, "
                        "official tags in meta",
            fields={"id": "id"}, mappable=frozenset(),
            detect=frozenset({"segment", "template"}),
            build=mlqe.build, reader=mlqe.read_rows,
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
