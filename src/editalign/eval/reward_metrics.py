"""How good is a reward model: pairwise accuracy, token AUROC / F1, calibration (docs/methods.md §3).

Input is one :class:`PairRewards` per held-out pair: the token rewards and edit labels of
the response tokens of both sides (final EOS included, as stored), and optionally which
original tokens people marked as errors (QA-Feedback). Everything here is numpy.

- ``pairwise_accuracy_sum`` / ``_last``: share of pairs whose revised side scores above the
  original (sum of token rewards / reward at the last token); a tie counts one half.
  Revised ≻ original is chosen ≻ rejected for preference data (its chosen side is stored
  as ``revised``).
- ``pairwise_accuracy_edit``: Σ_{A(ỹ)} r > Σ_{D(ŷ)} r, the quantity ``edit_bt`` trains.
- ``token_auroc`` / ``token_f1``: bad tokens (D(ŷ): deleted or substituted tokens of the
  original, EOS excluded) against the other original response tokens, scored by −reward;
  F1 at the best threshold. ``edit_auroc``: D(ŷ) against A(ỹ) (revised changed tokens).
- ``human_auroc`` / ``human_f1``: the same on original tokens, with the human error spans
  as truth (only when the pairs carry them).
- calibration: mean reward of every (side, label) class; ``token_ece``, the expected
  calibration error of σ(z) read as P(token is good) on original tokens (meaningful for
  ``token_cls``, whose head is trained as that probability); ``pair_confidence``, the mean
  σ(score(ỹ) − score(ŷ)) of the sum scores, to set beside the pairwise accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from editalign.data.align import LABEL_NAMES, Label

_BAD = (Label.DELETED.value, Label.SUBSTITUTED.value)
_GOOD_CHANGED = (Label.ADDED.value, Label.SUBSTITUTED.value)


@dataclass
class PairRewards:
    """Token rewards of one pair's two responses (final EOS last), with their edit labels."""

    revised_rewards: np.ndarray
    revised_labels: np.ndarray
    original_rewards: np.ndarray
    original_labels: np.ndarray
    # Raw head outputs z of the original side, for calibration; None to skip it.
    original_logits: np.ndarray | None = None
    # Per original response token (EOS excluded): inside a human error span.
    human_bad: np.ndarray | None = None


def auroc(scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray
          ) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one
    class is empty. Higher scores should mean positive."""
    scores = np.asarray(scores, dtype=float)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=float)
    # average rank (1-based) of each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def best_f1(scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray
            ) -> tuple[float, float]:
    """Highest F1 over thresholds "score ≥ t → positive", and that threshold."""
    scores = np.asarray(scores, dtype=float)
    pos = np.asarray(positives, dtype=bool)
    if pos.sum() == 0 or len(scores) == 0:
        return 0.0, float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], pos[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    # only cut between different scores: the last index of every run of equal scores
    cut = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = tp[cut], fp[cut]
    f1 = 2 * tp / (tp + fp + pos.sum())
    k = int(np.argmax(f1))
    return float(f1[k]), float(s[cut[k]])


def expected_calibration_error(probs: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> float:
    """Σ_bins (n_b / n)·|mean prob − mean outcome| over equal-width probability bins."""
    probs = np.asarray(probs, dtype=float)
    outcomes = np.asarray(outcomes, dtype=float)
    if len(probs) == 0:
        return float("nan")
    idx = np.minimum((probs * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(probs[sel].mean() - outcomes[sel].mean())
    return float(ece)


def _accuracy(diff: np.ndarray) -> float:
    return float(np.mean((diff > 0) + 0.5 * (diff == 0))) if len(diff) else float("nan")


def _mean_reward_by_class(pairs: Sequence[PairRewards]) -> dict[str, float]:
    """The mean token reward of each label class on each side (``mean_reward_original_deleted``
    …): a reward model that ranks the classes puts the edited ones apart."""
    by_class: dict[str, list[np.ndarray]] = {}
    for p in pairs:
        for side, rewards, labels in (("revised", p.revised_rewards, p.revised_labels),
                                      ("original", p.original_rewards, p.original_labels)):
            rew, lab = np.asarray(rewards, float), np.asarray(labels)
            for code, name in LABEL_NAMES.items():
                sel = lab == code
                if sel.any():
                    by_class.setdefault(f"{side}_{name}", []).append(rew[sel])
    return {f"mean_reward_{k}": float(np.concatenate(v).mean())
            for k, v in sorted(by_class.items())}


def reward_metrics(pairs: Sequence[PairRewards]) -> dict[str, Any]:
    """All metrics of the module docstring for held-out ``pairs``."""
    if not pairs:
        return {}
    d_sum, d_last, d_edit = [], [], []
    orig_scores, orig_bad, orig_logits = [], [], []
    edit_scores, edit_bad = [], []
    human_scores, human_bad = [], []
    for p in pairs:
        rr, rl = np.asarray(p.revised_rewards, float), np.asarray(p.revised_labels)
        orr, ol = np.asarray(p.original_rewards, float), np.asarray(p.original_labels)
        d_sum.append(rr.sum() - orr.sum())
        d_last.append(rr[-1] - orr[-1])
        added = np.isin(rl, _GOOD_CHANGED)
        added[-1] = True  # the revised final token belongs to A(ỹ)
        bad = np.isin(ol, _BAD)
        bad[-1] = False
        d_edit.append(rr[added].sum() - orr[bad].sum())
        # token-level: original response tokens without the final EOS
        o_r, o_bad = orr[:-1], bad[:-1]
        orig_scores.append(-o_r)
        orig_bad.append(o_bad)
        if p.original_logits is not None:
            orig_logits.append(np.asarray(p.original_logits, float)[:-1])
        r_changed = np.isin(rl[:-1], _GOOD_CHANGED)
        edit_scores += [-o_r[o_bad], -rr[:-1][r_changed]]
        edit_bad += [np.ones(int(o_bad.sum()), bool), np.zeros(int(r_changed.sum()), bool)]
        if p.human_bad is not None:
            hb = np.asarray(p.human_bad, bool)
            human_scores.append(-o_r[: len(hb)])
            human_bad.append(hb[: len(o_r)])
    d_sum_a = np.asarray(d_sum)
    out: dict[str, Any] = {
        "pairs": len(pairs),
        "pairwise_accuracy_sum": _accuracy(d_sum_a),
        "pairwise_accuracy_last": _accuracy(np.asarray(d_last)),
        "pairwise_accuracy_edit": _accuracy(np.asarray(d_edit)),
    }
    scores, bad = np.concatenate(orig_scores), np.concatenate(orig_bad)
    out["token_auroc"] = auroc(scores, bad)
    out["token_f1"], _ = best_f1(scores, bad)
    out["bad_token_rate"] = float(bad.mean()) if len(bad) else float("nan")
    out["edit_auroc"] = auroc(np.concatenate(edit_scores), np.concatenate(edit_bad))
    if human_scores:
        hs, hb = np.concatenate(human_scores), np.concatenate(human_bad)
        out["human_auroc"] = auroc(hs, hb)
        out["human_f1"], _ = best_f1(hs, hb)
        out["human_bad_rate"] = float(hb.mean()) if len(hb) else float("nan")
    calibration = _mean_reward_by_class(pairs)
    if orig_logits:
        z = np.concatenate(orig_logits)
        calibration["token_ece"] = expected_calibration_error(1 / (1 + np.exp(-z)), ~bad)
    calibration["pair_confidence"] = float(np.mean(1 / (1 + np.exp(-np.clip(d_sum_a, -50, 50)))))
    out["calibration"] = calibration
    return out


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """One level of ``{name: number}`` for Trainer logs (``calibration`` keys get its prefix)."""
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            flat.update(flatten_metrics(v, f"{prefix}{k}_"))
        else:
            flat[f"{prefix}{k}"] = float(v)
    return flat
