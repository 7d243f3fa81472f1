"""Batches of edit pairs: both sides of every pair in one forward pass.

A FIGA batch of B pairs is 2B sequences, the revised sides first, then the original
sides, either padded to a rectangle (``input_ids``/``attention_mask``) or, padding-free,
packed into one row without pad tokens (``position_ids`` restarting at 0 for every
sequence; transformers then builds a block-diagonal causal mask, so sequences never see
each other). Everything the loss needs is given per *predicted* token, already shifted
(position t of these tensors describes token t+1), so packed and padded batches share
one code path:

- ``shift_labels``: the next token where its FIGA weight can be nonzero, else -100. The
  Trainer counts these for ``num_items_in_batch`` (the normaliser over an accumulated,
  all-rank batch), and TRL's fused LM head scores only these positions. ``labels`` holds
  the same unshifted (Hugging Face convention; Trainer counts only batches that have it).
- ``edit_labels``: the next token's edit label (``Label`` code; -100 on prompt/padding).
- ``revised``: the next token is on the revised side.
- ``final_eos``: the next token is the final EOS of its response.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from editalign.data.align import IGNORE
from editalign.data.labeling import SIDES, LabeledPair
from editalign.losses import figa_weights


@dataclass
class PrepareReport:
    """What :func:`pair_features` kept, truncated and skipped (and why)."""

    pairs_in: int = 0
    kept: int = 0
    truncated_pairs: int = 0
    truncated_tokens: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common()) or "none"
        return (f"{self.kept} of {self.pairs_in} pairs used; truncated {self.truncated_pairs} "
                f"pairs ({self.truncated_tokens} tokens); skipped: {skipped}")


def pair_features(pairs: Sequence[LabeledPair], max_length: int | None = None,
                  ) -> tuple[list[dict[str, list[int]]], PrepareReport]:
    """Per-pair feature dicts for :class:`PairCollator`, cut to ``max_length`` tokens per side.

    Pairs labelled with a longer limit (an ``editalign label`` directory) are truncated
    here (the end of the sequence is cut, as ``keep_start``) and counted; a pair whose
    response on either side vanishes under truncation is skipped with the reason.
    """
    report = PrepareReport(pairs_in=len(pairs))
    features = []
    for lp in pairs:
        row: dict[str, list[int]] = {}
        dropped = 0
        for name in SIDES:
            side = getattr(lp, name)
            ids, labels = list(side.input_ids), list(side.labels)
            cut = max_length is not None and len(ids) > max_length
            if cut:
                dropped += len(ids) - max_length
                ids, labels = ids[:max_length], labels[:max_length]
            if all(label == IGNORE for label in labels[1:]):
                report.skipped["response truncated away (prompt fills max_length)" if cut
                               else f"no {name} response token"] += 1
                break
            row[f"{name}_input_ids"], row[f"{name}_labels"] = ids, labels
        else:
            if dropped:
                report.truncated_pairs += 1
                report.truncated_tokens += dropped
            report.truncated_tokens += int(lp.meta.get("truncated_tokens", 0))
            report.truncated_pairs += bool(lp.truncated and not dropped)
            report.kept += 1
            features.append(row)
    return features, report


@dataclass
class PairCollator:
    """Collate :func:`pair_features` dicts into one FIGA batch (see the module docstring).

    ``alpha``/``beta``/``gamma`` only decide which positions are scored (nonzero weight);
    the weights themselves are computed on the device by the trainer.
    """

    pad_token_id: int
    eos_token_id: int
    alpha: float = 1.0
    beta: float = 0.5
    gamma: float = 0.0
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    # Shared-prefix layout (:mod:`editalign.train.shared_prefix`): one row per pair; the
    # per-token tensors are the padding-free ones and ``gather_index`` maps each of their
    # positions to the flattened (row * length + column) layout position that predicts it.
    shared_prefix: bool = False
    # With ``shared_prefix``: use the shared layout for a batch only when its padded size is
    # at most this fraction of the padded layout's (else the batch is padded); None: always.
    shared_prefix_max_ratio: float | None = None
    # With ``shared_prefix``: also ship the dense (B, 1, L, L) mask (sdpa/eager). FlexAttention
    # builds its BlockMask on the device from ``segments``, which every shared batch carries.
    shared_prefix_dense_mask: bool = True

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [(f[f"{name}_input_ids"], f[f"{name}_labels"], name == "revised")
                for name in SIDES for f in features]
        ids = [torch.as_tensor(s[0], dtype=torch.long) for s in seqs]
        labels = [torch.as_tensor(s[1], dtype=torch.long) for s in seqs]
        ignore = torch.tensor([IGNORE])
        # Shift by one: position t describes token t+1; the last position predicts nothing.
        shift_edit = [torch.cat([lab[1:], ignore]) for lab in labels]
        shift_ids = [torch.cat([i[1:], ignore]) for i in ids]
        revised = [torch.full_like(i, int(s[2]), dtype=torch.bool) for i, s in zip(ids, seqs,
                                                                                    strict=True)]
        final_eos = []
        for i, lab in zip(ids, labels, strict=True):
            flag = torch.zeros_like(i, dtype=torch.bool)
            if len(i) >= 2 and i[-1] == self.eos_token_id and lab[-1] != IGNORE:
                flag[-2] = True  # position -2 predicts the final EOS
            final_eos.append(flag)
        if self.shared_prefix and (self.shared_prefix_max_ratio is None or shared_prefix_ratio(
                features) <= self.shared_prefix_max_ratio):
            batch = _shared_prefix_inputs(features, self.pad_token_id,
                                          self.shared_prefix_dense_mask)
            cat = {"edit_labels": torch.cat(shift_edit)[None], "targets": torch.cat(shift_ids)[None],
                   "revised": torch.cat(revised)[None], "final_eos": torch.cat(final_eos)[None]}
        elif self.padding_free:
            batch = {
                "input_ids": torch.cat(ids)[None],
                "position_ids": torch.cat([torch.arange(len(i)) for i in ids])[None],
            }
            cat = {"edit_labels": torch.cat(shift_edit)[None], "targets": torch.cat(shift_ids)[None],
                   "revised": torch.cat(revised)[None], "final_eos": torch.cat(final_eos)[None]}
        else:
            batch = {
                "input_ids": _pad(ids, self.pad_token_id, self.pad_to_multiple_of),
                "attention_mask": _pad([torch.ones_like(i) for i in ids], 0,
                                       self.pad_to_multiple_of),
            }
            cat = {"edit_labels": _pad(shift_edit, IGNORE, self.pad_to_multiple_of),
                   "targets": _pad(shift_ids, IGNORE, self.pad_to_multiple_of),
                   "revised": _pad(revised, False, self.pad_to_multiple_of),
                   "final_eos": _pad(final_eos, False, self.pad_to_multiple_of)}
        weights = figa_weights(cat["edit_labels"], cat["revised"], cat["final_eos"],
                               alpha=self.alpha, beta=self.beta, gamma=self.gamma)
        batch["shift_labels"] = torch.where(weights != 0, cat.pop("targets"), IGNORE)
        # The same in Hugging Face's unshifted convention; Trainer only counts
        # `num_items_in_batch` for batches that carry `labels` (and then counts `shift_labels`).
        batch["labels"] = torch.cat([torch.full_like(batch["shift_labels"][:, :1], IGNORE),
                                     batch["shift_labels"][:, :-1]], dim=1)
        batch.update(cat)
        return batch


def shared_prefix_ratio(features: Sequence[dict[str, Any]]) -> float:
    """Positions of the shared-prefix layout / positions of the padded layout (both padded
    to a rectangle): under 1 the shared layout computes less."""
    from editalign.train.shared_prefix import common_prefix_length

    shared = padded = 0
    for f in features:
        o, r = f["original_input_ids"], f["revised_input_ids"]
        shared = max(shared, len(o) + len(r) - common_prefix_length(o, r))
        padded = max(padded, len(o), len(r))
    return shared / (2 * padded)


def _shared_prefix_inputs(features: Sequence[dict[str, Any]], pad_token_id: int,
                          dense_mask: bool = True) -> dict[str, torch.Tensor]:
    """Shared-prefix layout inputs (``segments``, and the dense ``attention_mask`` unless
    ``dense_mask`` is False) plus ``gather_index`` in the packed per-token order (all
    revised sides, then all original sides; one entry per token, the last one of each side
    predicting nothing and pointing at position 0)."""
    from editalign.train.shared_prefix import build_shared_prefix_batch

    layout = build_shared_prefix_batch(
        [(f["original_input_ids"], f["revised_input_ids"]) for f in features], pad_token_id,
        dense_mask=dense_mask)
    length = layout.input_ids.shape[1]
    index = []
    for name in SIDES:
        for row, f in enumerate(features):
            n = len(f[f"{name}_input_ids"])
            index.append(layout.source[name][row, :n - 1] + row * length)
            index.append(torch.zeros(1, dtype=torch.long))
    out = {"input_ids": layout.input_ids, "position_ids": layout.position_ids,
           "segments": layout.segments, "gather_index": torch.cat(index)[None]}
    if layout.attention_mask is not None:
        out["attention_mask"] = layout.attention_mask
    return out


def _pad(seqs: Sequence[torch.Tensor], value: Any, multiple: int | None) -> torch.Tensor:
    length = max(len(s) for s in seqs)
    if multiple:
        length = -(-length // multiple) * multiple
    out = torch.full((len(seqs), length), value, dtype=seqs[0].dtype)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = s
    return out
