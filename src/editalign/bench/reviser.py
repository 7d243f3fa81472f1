"""The programmatic minimal-edit reviser: fix exactly the errors the gold judge sees.

- a wrong value of an attribute the entity has is replaced by the right value (same
  capitalisation of the first letter as written; on the grounded task the card's value, and
  the edit's kind says where the wrong one came from, see :func:`value_error_kind`), and a wrong name word by the entity's
  own (first name for a first name or a pet's name, last name for a last name);
- hedges, fillers and repeated sentences are deleted together with the whitespace that
  joined them to the text (the space before them, or after a leading one);
- nothing else changes. A mention of an attribute the entity does not have (a species
  for a person) cannot be fixed by a minimal edit and is left alone.

On the noisy training data (:func:`~editalign.bench.responses.render_response`) this gives back
the clean response exactly, so the edit distance between original and revision is the
size of the planted errors; on free model output it is the smallest change after which
the judge finds no wrong value and no unwanted phrase.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from editalign.bench.judge import Mention, is_correct, unwanted_spans, value_mentions
from editalign.bench.world import GROUNDED_VALUE_ERRORS


@dataclass(frozen=True)
class Edit:
    start: int
    end: int
    replacement: str
    kind: str  # wrong_value | wrong_name | hedge | filler | repeat


@dataclass
class Revision:
    original: str
    text: str
    edits: list[Edit] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.text != self.original


def _deletion(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a span to take the whitespace that joins it to the text with it."""
    while start > 0 and text[start - 1].isspace():
        start -= 1
    if start == 0:  # a leading phrase: take the whitespace after it instead
        while end < len(text) and text[end].isspace():
            end += 1
    return start, end


def _match_case(written: str, value: str) -> str:
    if written[:1].isupper() and value[:1].islower():
        return value[:1].upper() + value[1:]
    return value


EDIT_KINDS = ("wrong_value", "wrong_name", "hedge", "filler", "repeat",
              *GROUNDED_VALUE_ERRORS)


def value_error_kind(mention: Mention, info: Mapping[str, Any]) -> str:
    """What kind of wrong value ``mention`` is. On the first task always ``wrong_value``; on
    the grounded task (``info["task"] == "grounded"``) where the value came from: the
    distractor card (``distractor_value``), the entity's own card under another attribute
    (``swapped_value``), or no card (``invented_value``)."""
    if info.get("task") != "grounded":
        return "wrong_value"
    value = mention.value.lower()
    distractor = info.get("distractor") or {}
    if value in {v.lower() for v in distractor.get("facts", {}).values()}:
        return "distractor_value"
    if value in {v.lower() for v in info["facts"].values()}:
        return "swapped_value"
    return "invented_value"


def revise(response: str, info: Mapping[str, Any], max_passes: int = 3,
           kinds: Collection[str] | None = None) -> Revision:
    """Minimal edit of ``response`` for the entity in ``info`` (a prompts row's ``bench``).

    Fixing a value can make two sentences equal (``"X is 30. X is 64."``), so the edit is
    repeated until nothing changes (at most ``max_passes`` times); ``edits`` lists every
    pass's edits in order, each with positions in the text as that pass saw it.
    ``kinds`` (a subset of ``EDIT_KINDS``) fixes only those errors: what a policy would gain
    from fixing one kind of error alone (``benchmarks/bench_headroom.py``).
    """
    if kinds is not None and set(kinds) - set(EDIT_KINDS):
        raise ValueError(f"unknown edit kinds {sorted(set(kinds) - set(EDIT_KINDS))}; "
                         f"choose from {', '.join(EDIT_KINDS)}")
    text, edits = response, []
    for _ in range(max_passes):
        step = _revise_once(text, info, kinds)
        if not step.changed:
            break
        text = step.text
        edits.extend(step.edits)
    return Revision(response, text, edits)


def _revise_once(response: str, info: Mapping[str, Any],
                 kinds: Collection[str] | None = None) -> Revision:
    edits: list[Edit] = []
    for span in unwanted_spans(response):
        start, end = span.start, span.end
        if span.kind != "hedge" or response[start] != ",":
            start, end = _deletion(response, start, end)
        edits.append(Edit(start, end, "", span.kind))
    for mention in value_mentions(response, info["facts"]):
        ok, right = is_correct(mention, info)
        if not ok and right is not None:
            kind = "wrong_name" if mention.attribute == "name" else \
                value_error_kind(mention, info)
            edits.append(Edit(mention.start, mention.end, _match_case(mention.value, right),
                              kind))
    if kinds is not None:
        edits = [e for e in edits if e.kind in kinds]
    # Keep non-overlapping edits; deletions of whole phrases come first and win.
    kept: list[Edit] = []
    for edit in edits:
        if not any(k.start < edit.end and edit.start < k.end for k in kept):
            kept.append(edit)
    kept.sort(key=lambda e: e.start)
    parts, at = [], 0
    for edit in kept:
        parts.append(response[at:edit.start])
        parts.append(edit.replacement)
        at = edit.end
    parts.append(response[at:])
    return Revision(response, "".join(parts), kept)
