"""Token labels from a minimal edit (METHODS §1).

The two response token-id sequences are aligned with unit-cost Levenshtein edit
operations (rapidfuzz's C++ implementation; it returns the same operations as
``Levenshtein.editops``, which the official FIGA code uses). Every token then gets one
label: ``equal``, ``added``, ``substituted`` or ``deleted``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from rapidfuzz.distance import Levenshtein


class Label(IntEnum):
    """Per-token edit label. Stored as small integers with every labelled data set."""

    EQUAL = 0
    ADDED = 1  # revised side: target of an insert
    SUBSTITUTED = 2  # either side: source/target of a replace
    DELETED = 3  # original side: source of a delete


# Positions that carry no label (prompt, padding) use the usual Hugging Face ignore index.
IGNORE = -100

LABEL_NAMES = {label.value: label.name.lower() for label in Label}


@dataclass(frozen=True)
class Alignment:
    """Labels for both sides of one edit, and the operations that produced them.

    ``editops`` are ``(op, original_position, revised_position)`` with op in
    ``insert``/``delete``/``replace``, exactly as ``Levenshtein.editops`` returns them.
    """

    original_labels: list[int]
    revised_labels: list[int]
    editops: list[tuple[str, int, int]]

    @property
    def distance(self) -> int:
        return len(self.editops)


def align(original: Sequence[Hashable], revised: Sequence[Hashable]) -> Alignment:
    """Label every element of ``original`` and ``revised`` (token ids, or any hashables).

    >>> a = align([10, 11, 12, 13, 2], [10, 21, 12, 13, 14, 2])
    >>> a.revised_labels
    [0, 2, 0, 0, 1, 0]
    >>> a.original_labels
    [0, 2, 0, 0, 0]
    """
    original_labels = [Label.EQUAL.value] * len(original)
    revised_labels = [Label.EQUAL.value] * len(revised)
    ops = Levenshtein.editops(original, revised).as_list()
    for op, i, j in ops:
        if op == "replace":
            original_labels[i] = Label.SUBSTITUTED.value
            revised_labels[j] = Label.SUBSTITUTED.value
        elif op == "insert":
            revised_labels[j] = Label.ADDED.value
        else:  # delete
            original_labels[i] = Label.DELETED.value
    return Alignment(original_labels, revised_labels, ops)


def apply_editops(original: Sequence[Hashable], ops: list[tuple[str, int, int]],
                  revised: Sequence[Hashable]) -> list[Hashable]:
    """Apply ``editops`` to ``original`` (taking new elements from ``revised``).

    Used by the property tests: applying the operations must reproduce ``revised``.
    """
    by_source: dict[int, list[tuple[str, int]]] = {}
    for op, i, j in ops:
        by_source.setdefault(i, []).append((op, j))
    out: list[Hashable] = []
    for i in range(len(original) + 1):
        keep = i < len(original)
        for op, j in by_source.get(i, []):
            if op == "insert":
                out.append(revised[j])
            elif op == "replace":
                out.append(revised[j])
                keep = False
            else:
                keep = False
        if keep:
            out.append(original[i])
    return out


# A pre-token is a word or a run of punctuation, each with the whitespace before it, so
# that the pre-tokens of a text concatenate back to the text.
_PRETOKEN = re.compile(r"\s*(?:\w+|[^\w\s]+)|\s+$", re.UNICODE)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words (whitespace/punctuation pre-tokens) of ``text``."""
    return [m.span() for m in _PRETOKEN.finditer(text)]


def align_words(
    original_text: str,
    revised_text: str,
    original_offsets: Sequence[tuple[int, int]],
    revised_offsets: Sequence[tuple[int, int]],
) -> Alignment:
    """Word-level ("phrase") labels, projected onto tokens.

    Words are aligned with the same Levenshtein operations (words compared without their
    leading whitespace), then every token takes the label of the words its character span
    overlaps; a token overlapping a changed word is changed even if it also overlaps an
    unchanged one. Tokens with an empty span (special tokens such as EOS) are ``equal``.
    ``editops`` are word-level operations.
    """
    o_spans, r_spans = word_spans(original_text), word_spans(revised_text)
    o_words = [original_text[s:e].strip() for s, e in o_spans]
    r_words = [revised_text[s:e].strip() for s, e in r_spans]
    words = align(o_words, r_words)
    return Alignment(
        _project(words.original_labels, o_spans, original_offsets),
        _project(words.revised_labels, r_spans, revised_offsets),
        words.editops,
    )


def _project(word_labels: list[int], word_char_spans: list[tuple[int, int]],
             token_offsets: Sequence[tuple[int, int]]) -> list[int]:
    labels = [Label.EQUAL.value] * len(token_offsets)
    w = 0
    for t, (start, end) in enumerate(token_offsets):
        if end <= start:
            continue
        while w < len(word_char_spans) and word_char_spans[w][1] <= start:
            w += 1
        k = w
        while k < len(word_char_spans) and word_char_spans[k][0] < end:
            if word_labels[k] != Label.EQUAL.value:
                labels[t] = word_labels[k]
                break
            k += 1
    return labels
