"""Token rewards of both sides of edit pairs: the one pair scorer.

``editalign score``, the reviser's reward-model filter, the benchmark report and the reward
trainer's evaluation all score pairs here: batches of
:class:`~editalign.batching.tokens.RewardPairCollator` (either layout) through
:func:`~editalign.batching.tokens.token_outputs`, split into one
:class:`~editalign.eval.reward_metrics.PairRewards` per pair, with a NaN or inf reward on a
response token reported by pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from editalign.batching.tokens import PairDataset, RewardPairCollator, token_outputs
from editalign.data.align import IGNORE
from editalign.data.labeling import SIDES, LabeledPair
from editalign.eval.reward_metrics import PairRewards
from editalign.eval.spans import human_bad_tokens
from editalign.reward_model import TokenRewardModel, TokenRewardOutput, check_finite_rewards

# (outputs, batch) -> the batch's loss, for a caller that reports one beside the rewards
BatchLoss = Callable[[TokenRewardOutput, dict[str, torch.Tensor]], torch.Tensor]


@torch.no_grad()
def score_pairs(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                pairs: Sequence[LabeledPair], unwrapped: TokenRewardModel | None = None,
                loss: BatchLoss | None = None) -> tuple[list[PairRewards], float]:
    """Token rewards of every pair in ``batches`` (collated with ``index``, on the model's
    device), and the mean of ``loss`` over the batches (NaN without one).

    ``model`` may be wrapped (``unwrapped`` is then the bare reward model); it is left in
    the training mode it came in.
    """
    was_training = model.training
    model.eval()
    results: list[PairRewards] = []
    losses = []
    try:
        for inputs in batches:
            out = token_outputs(model, inputs, unwrapped)
            if loss is not None:
                losses.append(float(loss(out, inputs)))
            results += batch_pair_rewards(out.logits, out.rewards, inputs["edit_labels"],
                                          [pairs[int(i)] for i in inputs["index"]])
    finally:
        model.train(was_training)
    return results, float(np.mean(losses)) if losses else float("nan")


def score_labeled(model: TokenRewardModel, pairs: Sequence[LabeledPair], pad_token_id: int,
                  batch_size: int = 8) -> list[PairRewards]:
    """Token rewards of both sides of every pair (response tokens, final EOS included),
    ``batch_size`` pairs per padded forward pass."""
    device = next(model.parameters()).device
    collate = RewardPairCollator(pad_token_id=pad_token_id)
    dataset = PairDataset(pairs)

    def batches() -> Iterable[dict[str, torch.Tensor]]:
        for start in range(0, len(pairs), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size,
                                                                  len(pairs)))])
            yield {k: v.to(device) for k, v in batch.items()}

    model.eval()  # and it stays so, as callers of this function expect
    return score_pairs(model, batches(), pairs)[0]


def human_bad(lp: LabeledPair) -> np.ndarray | None:
    """Per original response token (EOS excluded): inside a human error span (QA-Feedback)."""
    spans = lp.meta.get("error_spans")
    if spans is None:
        return None
    offsets = lp.original.offsets
    if offsets[-1:] == [(0, 0)]:
        offsets = offsets[:-1]
    return np.array([h is not None for h in human_bad_tokens(lp.original_text, offsets, spans)])


def batch_pair_rewards(logits: torch.Tensor, rewards: torch.Tensor, edit_labels: torch.Tensor,
                       pairs: Sequence[LabeledPair]) -> list[PairRewards]:
    """Split a (2B, L) paired batch (rows in ``SIDES`` order) into one
    :class:`PairRewards` per pair.

    A NaN or inf reward on a response token raises
    :class:`~editalign.reward_model.NonFiniteRewardError` naming the pair.
    """
    n = len(pairs)
    check_finite_rewards(rewards, edit_labels != IGNORE,
                         rows=[f"pair {lp.id!r} ({side})" for side in SIDES for lp in pairs])
    logits, rewards, labels = (t.float().cpu().numpy() for t in (logits, rewards, edit_labels))
    revised_row, original_row = (SIDES.index(side) * n for side in ("revised", "original"))
    out = []
    for i, lp in enumerate(pairs):
        r, o = revised_row + i, original_row + i
        r_sel, o_sel = labels[r] != IGNORE, labels[o] != IGNORE
        out.append(PairRewards(
            revised_rewards=rewards[r][r_sel], revised_labels=labels[r][r_sel],
            original_rewards=rewards[o][o_sel], original_labels=labels[o][o_sel],
            original_logits=logits[o][o_sel], human_bad=human_bad(lp)))
    return out
