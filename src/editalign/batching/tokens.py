"""Batches of edit pairs for a per-token head (reward models): rows, and outputs per token.

A batch of B pairs is 2B right-padded rows, revised sides first (rows 0..B-1), then
original sides (B..2B-1), each with its edit labels. In the shared-prefix layout the model
sees B rows ``[shared prefix | original suffix | revised suffix]`` instead, and
:func:`token_outputs` gathers every token's output back to its place in the 2B rows, so
losses, metrics and the pair scorer read one shape whatever the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from editalign.batching.layout import PairLayout, is_shared_batch
from editalign.batching.shared_prefix import (
    build_shared_prefix_batch,
    forward_shared,
    side_token_rows,
)
from editalign.data.align import IGNORE
from editalign.data.labeling import SIDES, LabeledPair
from editalign.reward_model import CONTEXTS, TokenRewardModel, TokenRewardOutput, echo_sequence


class PairDataset(Dataset):
    """Labelled pairs as feature dicts: ``{side}_input_ids``, ``{side}_labels`` and
    ``{side}_response_start`` per side, and ``index``, the pair's position (the scorer maps
    rewards back to pairs with it)."""

    def __init__(self, pairs: Sequence[LabeledPair], max_length: int | None = None) -> None:
        self.pairs = list(pairs)
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        lp = self.pairs[i]
        row: dict[str, Any] = {"index": i}
        for name in SIDES:
            side = getattr(lp, name)
            ids, labels = side.input_ids, side.labels
            if self.max_length is not None:
                ids, labels = ids[: self.max_length], labels[: self.max_length]
            row[f"{name}_input_ids"], row[f"{name}_labels"] = ids, labels
            row[f"{name}_response_start"] = min(side.response_start, len(ids))
        return row


@dataclass
class RewardPairCollator:
    """B pairs → 2B right-padded rows: ``input_ids``, ``attention_mask``, ``edit_labels``
    (IGNORE on prompt and padding); rows 0..B-1 revised, B..2B-1 original.

    When ``layout`` puts a batch in the shared-prefix layout, the model inputs are instead
    B rows (``segments`` ``(B, L)``, ``position_ids``, the boolean ``(B, 1, L, L)``
    ``attention_mask`` unless the layout is for FlexAttention), and ``token_rows``
    ``(2B, T)`` gives the layout column of every token of the 2B padded rows (0 on
    padding); ``edit_labels`` is unchanged and ``token_mask`` is the padded layout's
    attention mask.

    ``response_start`` ``(2B,)`` is where each row's response begins. ``context`` is the
    reward model's (:mod:`editalign.reward_model`): padded rows are the same for every
    context (the model applies it), but the shared layout's rows are built for it: ``echo``
    lays out each side with its response written twice, ``bidirectional`` shares only the
    prompt and makes each side's response one bidirectional suffix block.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    layout: PairLayout = field(default_factory=PairLayout)
    context: str = "causal"

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._padded(features)
        if self.layout.use_shared(features):
            batch["token_mask"] = batch.pop("attention_mask")
            batch.update(_shared_reward_inputs(features, batch["input_ids"].shape[1],
                                               self.pad_token_id, self.layout.dense_mask,
                                               self.context))
        return batch

    def _padded(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [(f[f"{name}_input_ids"], f[f"{name}_labels"]) for name in SIDES for f in features]
        length = max(len(ids) for ids, _ in seqs)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
        edit_labels = torch.full((len(seqs), length), IGNORE, dtype=torch.long)
        for row, (ids, labels) in enumerate(seqs):
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            attention_mask[row, : len(ids)] = 1
            edit_labels[row, : len(labels)] = torch.as_tensor(labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "edit_labels": edit_labels}
        if f"{SIDES[0]}_response_start" in features[0]:
            batch["response_start"] = torch.as_tensor(
                [f[f"{name}_response_start"] for name in SIDES for f in features])
        if "index" in features[0]:
            batch["index"] = torch.as_tensor([f["index"] for f in features])
        return batch


def _shared_reward_inputs(features: Sequence[dict[str, Any]], width: int, pad_token_id: int,
                          dense_mask: bool = True, context: str = "causal",
                          ) -> dict[str, torch.Tensor]:
    """The shared-prefix model inputs of ``features`` for a reward model of ``context``, and
    ``token_rows`` ``(2B, width)``: row i (revised) and row B + i (original) index layout
    row i, each token at the position where its reward is read."""
    if context not in CONTEXTS:
        raise ValueError(f"context {context!r}: expected one of {', '.join(CONTEXTS)}")
    pairs, reads, prefix_caps = [], [], []
    for f in features:
        o, r = list(f["original_input_ids"]), list(f["revised_input_ids"])
        starts = (f.get("original_response_start"), f.get("revised_response_start"))
        if context != "causal" and None in starts:
            raise ValueError(f"context {context!r} needs each side's response_start")
        o_read, r_read = list(range(len(o))), list(range(len(r)))
        if context == "echo":  # each side as [prompt | response | response], read at copy 2
            (o, o_read), (r, r_read) = echo_sequence(o, starts[0]), echo_sequence(r, starts[1])
        pairs.append((o, r))
        reads.append((o_read, r_read))
        # bidirectional: share only the prompt; each response is its own block
        prefix_caps.append(min(starts) if context == "bidirectional" else len(o) + len(r))
    bidirectional = context == "bidirectional"
    layout = build_shared_prefix_batch(pairs, pad_token_id, dense_mask=dense_mask,
                                       max_prefix=prefix_caps, bidirectional=bidirectional)
    rows: dict[str, list[list[int]]] = {name: [] for name in SIDES}
    for (original, revised), (o_read, r_read), cap in zip(pairs, reads, prefix_caps,
                                                           strict=True):
        original_rows, revised_rows = side_token_rows(original, revised, cap)
        rows["original"].append([original_rows[t] for t in o_read])
        rows["revised"].append([revised_rows[t] for t in r_read])
    token_rows = torch.zeros((2 * len(pairs), width), dtype=torch.long)
    for row, side_rows in enumerate([row for name in SIDES for row in rows[name]]):
        token_rows[row, : len(side_rows)] = torch.as_tensor(side_rows)
    out = {**layout.model_inputs(), "token_rows": token_rows,
           "context_code": torch.tensor(CONTEXTS.index(context))}
    if bidirectional:
        out["bidirectional"] = torch.tensor(True)
    return out


def token_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                  unwrapped: TokenRewardModel | None = None) -> TokenRewardOutput:
    """Every token's head logit and reward, ``(2B, T)`` in the padded rows' order, for a
    batch of :class:`RewardPairCollator` in either layout.

    ``model`` (possibly DDP-wrapped; ``unwrapped`` is the bare :class:`TokenRewardModel`,
    default ``model``) is called as a whole, so data parallelism sees the forward pass. In
    the shared layout the head is per position, so reading each token's output at its own
    layout position after the head is exact.
    """
    bare = model if unwrapped is None else unwrapped
    if not is_shared_batch(inputs):
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     response_start=inputs.get("response_start"))
    built_for = CONTEXTS[int(inputs.get("context_code", 0))]
    if built_for != bare.context:
        raise ValueError(f"a shared-prefix batch built for context {built_for!r} given to a "
                         f"reward model of context {bare.context!r}; build the collator with "
                         "context=model.context")
    out = forward_shared(model, inputs, attention_of=bare.backbone)
    rows = inputs["token_rows"]

    def per_side(values: torch.Tensor) -> torch.Tensor:
        return torch.cat([values, values]).gather(1, rows)

    return TokenRewardOutput(logits=per_side(out.logits), rewards=per_side(out.rewards))


def token_mask(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tokens of a batch's pairs (the padded rows' attention mask), whichever layout
    computed them."""
    return inputs["token_mask"] if is_shared_batch(inputs) else inputs["attention_mask"]
