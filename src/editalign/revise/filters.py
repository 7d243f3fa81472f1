"""Filters that decide whether an LLM revision is kept, each saying why a row was dropped.

- :func:`check_completion`: an empty answer, or one cut off by the token limit
  (``finish_reason == "length"``), is not a revision.
- :func:`edit_ratio` / :func:`check_edit_ratio`: the normalised word-level edit distance
  between original and revision; above the threshold the reviser rewrote the response
  instead of editing it minimally.
- :func:`reward_filter`: SPA's rule, keep a revision when RM(revised) - RM(original) >=
  margin, with any scorer ``(prompts, responses) -> list[float]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""Scores each (prompt, response) pair; higher is better."""

_WORD = re.compile(r"\w+|[^\w\s]")
_FENCE = re.compile(r"^```[\w-]*\n(.*)\n```$", re.DOTALL)
_LABEL = re.compile(r"^(?:corrected|revised|fixed|edited)(?: response| answer)?\s*:\s*",
                    re.IGNORECASE)


@dataclass(frozen=True)
class Decision:
    """A filter's verdict: ``kept`` and a short human-readable ``reason``."""

    filter: str
    kept: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"filter": self.filter, "kept": self.kept, "reason": self.reason}


def clean_completion(text: str) -> str:
    """The revision inside an answer: surrounding whitespace, one code fence and a leading
    ``Corrected response:`` style label are removed; nothing else is touched."""
    text = text.strip()
    if match := _FENCE.match(text):
        text = match.group(1).strip()
    return _LABEL.sub("", text, count=1).strip()


def words(text: str) -> list[str]:
    """Words and punctuation marks, the units :func:`edit_ratio` counts."""
    return _WORD.findall(text)


def edit_ratio(original: str, revised: str) -> float:
    """Word-level Levenshtein distance divided by the longer length (0 = equal, 1 = disjoint)."""
    a, b = words(original), words(revised)
    if not a and not b:
        return 0.0
    return Levenshtein.normalized_distance(a, b)


def check_completion(text: str, finish_reason: str | None) -> Decision:
    if finish_reason == "length":
        return Decision("completion", False, "truncated completion (finish_reason=length); "
                        "raise --max-tokens")
    if not text.strip():
        return Decision("completion", False, "empty completion")
    return Decision("completion", True, f"complete (finish_reason={finish_reason})")


def check_edit_ratio(ratio: float, max_ratio: float | None) -> Decision:
    if max_ratio is None:
        return Decision("edit_ratio", True, f"edit ratio {ratio:.3f} (no threshold)")
    if ratio > max_ratio:
        return Decision("edit_ratio", False, f"edit ratio {ratio:.3f} > {max_ratio} "
                        "(a rewrite, not a minimal edit)")
    return Decision("edit_ratio", True, f"edit ratio {ratio:.3f} <= {max_ratio}")


def reward_filter(scorer: Scorer, prompts: Sequence[str], originals: Sequence[str],
                  revisions: Sequence[str], margin: float = 0.0,
                  ids: Sequence[str] | None = None,
                  ) -> list[tuple[Decision, dict[str, float]]]:
    """SPA-style filter: keep a revision when its reward beats the original's by ``margin``.

    Returns one ``(decision, scores)`` per row, ``scores`` holding ``original``,
    ``revised`` and ``delta``. A NaN or inf score raises
    :class:`~editalign.reward_model.NonFiniteRewardError` naming the row (its id from
    ``ids``, else its position).
    """
    if not (len(prompts) == len(originals) == len(revisions)):
        raise ValueError("prompts, originals and revisions must have the same length")
    if not prompts:
        return []
    before = [float(x) for x in scorer(list(prompts), list(originals))]
    after = [float(x) for x in scorer(list(prompts), list(revisions))]
    if len(before) != len(prompts) or len(after) != len(prompts):
        raise ValueError(f"the scorer returned {len(before)}/{len(after)} scores for "
                         f"{len(prompts)} rows")
    from editalign.reward_model import check_finite_rewards

    for side, scores in (("original", before), ("revised", after)):
        check_finite_rewards(scores, rows=[f"row {i if ids is None else repr(ids[i])} "
                                           f"({side})" for i in range(len(scores))],
                             source="the reward scorer")
    results = []
    for b, a in zip(before, after, strict=True):
        delta = a - b
        kept = delta >= margin
        reason = (f"reward gain {delta:+.4f} {'>=' if kept else '<'} margin {margin}")
        results.append((Decision("reward", kept, reason),
                        {"original": b, "revised": a, "delta": delta}))
    return results
