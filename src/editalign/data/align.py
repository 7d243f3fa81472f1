"""Token labels from a minimal edit (docs/methods.md §1).

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
from functools import cached_property

from rapidfuzz.distance import Levenshtein, Opcodes


class Label(IntEnum):
    """Per-token edit label. Stored as small integers with every labelled data set."""

    EQUAL = 0
    ADDED = 1  # revised side: target of an insert
    SUBSTITUTED = 2  # either side: source/target of a replace
    DELETED = 3  # original side: source of a delete


# Positions that carry no label (prompt, padding) use the usual Hugging Face ignore index.
IGNORE = -100

LABEL_NAMES = {label.value: label.name.lower() for label in Label}
# Plain ints for the hot loop (IntEnum attribute access is slow).
_EQUAL, _ADDED, _SUBSTITUTED, _DELETED = (int(label) for label in Label)


@dataclass(frozen=True)
class Alignment:
    """Labels for both sides of one edit, and the operations that produced them.

    ``opcodes`` are rapidfuzz's blocks ``(tag, i1, i2, j1, j2)`` of one optimal alignment;
    ``editops`` the same alignment as single operations ``(op, original_position,
    revised_position)``, exactly as ``Levenshtein.editops`` returns them.
    """

    original_labels: list[int]
    revised_labels: list[int]
    opcodes: list[tuple[str, int, int, int, int]]
    distance: int

    @cached_property
    def editops(self) -> list[tuple[str, int, int]]:
        ops = Opcodes(self.opcodes, len(self.original_labels), len(self.revised_labels))
        return ops.as_editops().as_list()


def align(original: Sequence[Hashable], revised: Sequence[Hashable]) -> Alignment:
    """Label every element of ``original`` and ``revised`` (token ids, or any hashables).

    Labels are filled block by block from the opcodes rather than op by op: a minimal
    edit of a long response is a few blocks but many single operations.

    >>> a = align([10, 11, 12, 13, 2], [10, 21, 12, 13, 14, 2])
    >>> a.revised_labels
    [0, 2, 0, 0, 1, 0]
    >>> a.original_labels
    [0, 2, 0, 0, 0]
    """
    original_labels = [_EQUAL] * len(original)
    revised_labels = [_EQUAL] * len(revised)
    opcodes = Levenshtein.opcodes(original, revised).as_list()
    distance = 0
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "replace":
            original_labels[i1:i2] = [_SUBSTITUTED] * (i2 - i1)
            revised_labels[j1:j2] = [_SUBSTITUTED] * (j2 - j1)
            distance += i2 - i1
        elif tag == "insert":
            revised_labels[j1:j2] = [_ADDED] * (j2 - j1)
            distance += j2 - j1
        elif tag == "delete":
            original_labels[i1:i2] = [_DELETED] * (i2 - i1)
            distance += i2 - i1
    return Alignment(original_labels, revised_labels, opcodes, distance)


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


# For text that is already tokenized by spaces (MLQE-PE's MT and post-edits), a word is
# a run of non-space characters, with the whitespace before it.
_SPACE_WORD = re.compile(r"\s*\S+|\s+$", re.UNICODE)


def word_spans(text: str, *, split_punctuation: bool = True) -> list[tuple[int, int]]:
    """Character spans of the words (whitespace/punctuation pre-tokens) of ``text``;
    ``split_punctuation=False``: space-separated words only."""
    pattern = _PRETOKEN if split_punctuation else _SPACE_WORD
    return [m.span() for m in pattern.finditer(text)]


@dataclass(frozen=True)
class WordAlignment:
    """Token labels projected from a word-level alignment (kept in ``words``)."""

    original_labels: list[int]
    revised_labels: list[int]
    words: Alignment


def align_words(
    original_text: str,
    revised_text: str,
    original_offsets: Sequence[tuple[int, int]],
    revised_offsets: Sequence[tuple[int, int]],
    *,
    split_punctuation: bool = True,
) -> WordAlignment:
    """Word-level ("phrase") labels, projected onto tokens.

    Words are aligned with the same Levenshtein operations (words compared without their
    leading whitespace), then every token takes the label of the words its character span
    overlaps; a token overlapping a changed word is changed even if it also overlaps an
    unchanged one. Tokens with an empty span (special tokens such as EOS) are ``equal``.
    """
    o_spans = word_spans(original_text, split_punctuation=split_punctuation)
    r_spans = word_spans(revised_text, split_punctuation=split_punctuation)
    o_words = [original_text[s:e].strip() for s, e in o_spans]
    r_words = [revised_text[s:e].strip() for s, e in r_spans]
    words = align(o_words, r_words)
    return WordAlignment(
        _project(words.original_labels, o_spans, original_offsets),
        _project(words.revised_labels, r_spans, revised_offsets),
        words,
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
