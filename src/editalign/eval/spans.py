"""Agreement between token labels (or token scores) and human error spans.

QA-Feedback annotators marked error spans on the original response by character offsets,
independently of the edit they then made. A token counts as *human-bad* when its character
span overlaps a marked span by at least one non-whitespace character; whether the edit
found it is read from the token's label (``deleted``/``substituted`` = flagged).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from editalign.data.align import Label
from editalign.data.labeling import LabeledPair

FLAGGED = (Label.DELETED.value, Label.SUBSTITUTED.value)


def human_bad_tokens(text: str, offsets: Sequence[tuple[int, int]],
                     spans: Iterable[dict[str, Any]]) -> list[str | None]:
    """For each token, the error type of the first human span it overlaps, else ``None``."""
    spans = sorted(((int(s["start"]), int(s["end"]), str(s.get("type", "error")))
                    for s in spans), key=lambda s: s[0])
    out: list[str | None] = []
    for start, end in offsets:
        hit = None
        for s, e, kind in spans:
            lo, hi = max(start, s), min(end, e)
            if lo < hi and text[lo:hi].strip():
                hit = kind
                break
        out.append(hit)
    return out


@dataclass
class SpanAgreement:
    """Token-level confusion counts between flagged tokens and human-bad tokens."""

    true_pos: int = 0
    false_pos: int = 0
    false_neg: int = 0
    true_neg: int = 0
    pairs: int = 0
    recall_by_type: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, flagged: Sequence[bool], human: Sequence[str | None]) -> None:
        self.pairs += 1
        for f, h in zip(flagged, human, strict=True):
            if h is not None:
                c = self.recall_by_type.setdefault(h, Counter())
                c["tokens"] += 1
                c["found"] += f
            if f and h is not None:
                self.true_pos += 1
            elif f:
                self.false_pos += 1
            elif h is not None:
                self.false_neg += 1
            else:
                self.true_neg += 1

    @property
    def precision(self) -> float:
        return self.true_pos / max(self.true_pos + self.false_pos, 1)

    @property
    def recall(self) -> float:
        return self.true_pos / max(self.true_pos + self.false_neg, 1)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def human_rate(self) -> float:
        """Share of tokens inside human spans: the precision of flagging at random."""
        total = self.true_pos + self.false_pos + self.false_neg + self.true_neg
        return (self.true_pos + self.false_neg) / max(total, 1)

    @property
    def flagged_rate(self) -> float:
        total = self.true_pos + self.false_pos + self.false_neg + self.true_neg
        return (self.true_pos + self.false_pos) / max(total, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs, "tp": self.true_pos, "fp": self.false_pos,
            "fn": self.false_neg, "tn": self.true_neg,
            "precision": self.precision, "recall": self.recall, "f1": self.f1,
            "human_bad_rate": self.human_rate, "flagged_rate": self.flagged_rate,
            "recall_by_error_type": {
                k: {"tokens": v["tokens"], "recall": v["found"] / max(v["tokens"], 1)}
                for k, v in sorted(self.recall_by_type.items())
            },
        }


def edit_label_agreement(labeled: Iterable[LabeledPair]) -> SpanAgreement:
    """How well the original's deleted/substituted tokens cover the human error spans.

    Pairs without ``meta['error_spans']`` are left out; EOS is never counted.
    """
    agreement = SpanAgreement()
    for lp in labeled:
        spans = lp.meta.get("error_spans")
        if spans is None:
            continue
        offsets = lp.original.offsets[:-1] if lp.original.offsets[-1:] == [(0, 0)] \
            else lp.original.offsets
        labels = lp.original.response_labels[: len(offsets)]
        human = human_bad_tokens(lp.original_text, offsets, spans)
        agreement.add([lab in FLAGGED for lab in labels], human)
    return agreement
