"""Batches of edit pairs for a language model (FIGA): both sides of every pair in one pass.

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
- ``figa_weights``: the static FIGA weight of the next token (α, −β, γ or 0), computed here
  once; ``shift_labels`` scores exactly its nonzero positions, and the loss applies it.

Which layout a batch takes is the :class:`~editalign.batching.layout.PairLayout`'s call; a
shared-prefix batch also carries ``gather_index``, the layout position that predicts each of
these per-token positions, and :func:`shared_scored_log_probs` runs its forward pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from editalign.batching.layout import PairLayout, is_shared_batch
from editalign.batching.shared_prefix import build_shared_prefix_batch, forward_shared
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

    ``alpha``/``beta``/``gamma`` give the static weights the batch carries (the trainer
    builds the collator from its config). ``layout`` decides padded, packed or shared-prefix
    per batch; without one, ``padding_free`` picks packed over padded.
    """

    pad_token_id: int
    eos_token_id: int
    alpha: float = 1.0
    beta: float = 0.5
    gamma: float = 0.0
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    layout: PairLayout | None = None

    def __post_init__(self) -> None:
        if self.layout is None:
            self.layout = PairLayout(layout="packed" if self.padding_free else "padded")

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
        layout = self.layout
        assert layout is not None  # set in __post_init__
        if layout.use_shared(features):
            batch = _shared_lm_inputs(features, self.pad_token_id, layout.dense_mask)
            cat = {"edit_labels": torch.cat(shift_edit)[None], "targets": torch.cat(shift_ids)[None],
                   "revised": torch.cat(revised)[None], "final_eos": torch.cat(final_eos)[None]}
        elif layout.packed:
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
        batch["figa_weights"] = weights
        batch.update(cat)
        return batch


def _shared_lm_inputs(features: Sequence[dict[str, Any]], pad_token_id: int,
                          dense_mask: bool = True) -> dict[str, torch.Tensor]:
    """Shared-prefix layout inputs (``segments``, and the dense ``attention_mask`` unless
    ``dense_mask`` is False) plus ``gather_index`` in the packed per-token order (all
    revised sides, then all original sides; one entry per token, the last one of each side
    predicting nothing and pointing at position 0)."""
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
    return {**layout.model_inputs(), "gather_index": torch.cat(index)[None]}


def pair_log_probs(model: Any, inputs: dict[str, Any], unwrapped: Any = None,
                   ) -> tuple[torch.Tensor, Any]:
    """log p of every scored token of a collated batch, whatever its layout, in the packed
    per-token order of :class:`PairCollator` (0 where ``shift_labels`` is -100), and the
    model's outputs (None for a shared-prefix batch).

    ``model`` is what the trainer calls (maybe DDP-wrapped), with TRL's fused LM head
    added: padded and packed batches go through it whole and never materialise the
    ``(batch, length, vocab)`` logits. A shared-prefix batch goes through
    :func:`shared_scored_log_probs` on ``unwrapped`` (default ``model``): it calls the
    decoder and the LM head itself, so it runs on one process only.
    """
    if is_shared_batch(inputs):
        return shared_scored_log_probs(model if unwrapped is None else unwrapped, inputs), None
    forward = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")
               if k in inputs}
    outputs = model(**forward, shift_labels=inputs["shift_labels"], fused_lm_head=True,
                    use_cache=False)
    return outputs.log_probs, outputs


def shared_scored_log_probs(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """log p of every scored token from the shared-prefix layout, in the packed per-token
    order of the other layouts (0 where ``shift_labels`` is -100); the LM head runs only on
    the scored positions."""
    base = model.get_base_model() if is_peft(model) else model
    hidden = forward_shared(base.get_decoder(), inputs, attention_of=base,
                            use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[inputs["gather_index"][0]]
    targets = inputs["shift_labels"][0]
    scored = targets != IGNORE
    logits = base.get_output_embeddings()(hidden[scored]).float()
    log_probs = torch.zeros(targets.shape, dtype=logits.dtype, device=logits.device)
    log_probs[scored] = logits.log_softmax(-1).gather(-1, targets[scored, None])[:, 0]
    return log_probs[None]


def is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _pad(seqs: Sequence[torch.Tensor], value: Any, multiple: int | None) -> torch.Tensor:
    length = max(len(s) for s in seqs)
    if multiple:
        length = -(-length // multiple) * multiple
    out = torch.full((len(seqs), length), value, dtype=seqs[0].dtype)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = s
    return out
