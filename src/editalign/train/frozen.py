"""Frozen lower layers for reward-model training, their outputs computed once (CPU recipe).

``editalign train token-rm --freeze_layers N`` freezes the embeddings and the lowest N
transformer layers; the layers above, the final norm and the head train. The training pairs
are fixed, so what the frozen part computes for them never changes: with the shared-prefix
layout (``--pair_layout shared``, decoder backbones) its output (layer N's hidden states of
every pair's row, bfloat16 on the CPU) is computed once before training, and every training
step runs only the top layers on it. Each epoch then costs the top layers alone, which is
what makes a CPU run of a 135M-270M backbone take minutes (docs/mlqe-pe.md). ``--keep_layers
M`` first cuts the model to its lowest M layers (the saved model has M layers).

How the top runs on the cache without a second model class: the backbone's layer list is
swapped for its top slice for the step (:func:`layer_slice`; Gemma 3's per-layer attention
kinds are sliced with it) and the cached states enter as ``inputs_embeds``, so the mask,
positions, context rows and the head are the ordinary ones (:mod:`editalign.batching`).
Evaluation and saving run the whole model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from editalign.batching.layout import PairLayout
from editalign.batching.shared_prefix import forward_shared
from editalign.batching.tokens import PairDataset, RewardPairCollator

logger = logging.getLogger(__name__)

# The cache's storage type: bfloat16 halves its memory (7,000 MLQE-PE pairs at SmolLM2's 576
# dimensions: ~0.8 GB); the states are cast back to the model's type for each batch.
CACHE_DTYPE = torch.bfloat16


def decoder_stack(backbone: nn.Module) -> nn.Module:
    """The module holding ``layers`` (a ModuleList) and ``norm``: the bare decoder under a
    PEFT wrapper or a ``model.`` attribute; a clear error for backbones without one."""
    module = backbone
    for _ in range(4):
        if isinstance(getattr(module, "layers", None), nn.ModuleList):
            return module
        inner = getattr(module, "base_model", None)
        inner = getattr(module, "model", None) if inner is None or inner is module else inner
        if inner is None:
            break
        module = inner
    raise ValueError(f"--freeze_layers/--keep_layers need a decoder with a `layers` list "
                     f"(Llama, Gemma, Qwen, SmolLM); {type(backbone).__name__} has none")


def _set_layers(stack: nn.Module, layers: Sequence[nn.Module], layer_types: list | None) -> None:
    stack.layers = nn.ModuleList(layers)
    stack.config.num_hidden_layers = len(layers)
    if layer_types is not None:
        stack.config.layer_types = list(layer_types)


def truncate_layers(backbone: nn.Module, keep: int) -> None:
    """Keep only the lowest ``keep`` transformer layers (for good: the config says so)."""
    stack = decoder_stack(backbone)
    n = len(stack.layers)
    if not 0 < keep <= n:
        raise ValueError(f"--keep_layers {keep}: the model has {n} layers")
    types = getattr(stack.config, "layer_types", None)
    _set_layers(stack, list(stack.layers)[:keep], types[:keep] if types else None)


@contextmanager
def layer_slice(backbone: nn.Module, start: int, stop: int | None = None,
                final_norm: bool = True) -> Iterator[None]:
    """Run ``backbone`` with only its layers ``start:stop`` (and, with ``final_norm=False``,
    no final norm: the output is layer ``stop``'s hidden states); restored on exit."""
    stack = decoder_stack(backbone)
    layers, norm = stack.layers, stack.norm
    count, types = stack.config.num_hidden_layers, getattr(stack.config, "layer_types", None)
    _set_layers(stack, list(layers)[start:stop], types[start:stop] if types else None)
    if not final_norm:
        stack.norm = nn.Identity()
    try:
        yield
    finally:
        stack.layers, stack.norm = layers, norm
        stack.config.num_hidden_layers = count
        if types is not None:
            stack.config.layer_types = types


def freeze_lower(backbone: nn.Module, n_frozen: int) -> int:
    """Freeze every backbone parameter outside layers ``n_frozen:`` and the final norm;
    returns the number of trainable backbone parameters."""
    stack = decoder_stack(backbone)
    n = len(stack.layers)
    if not 0 < n_frozen < n:
        raise ValueError(f"--freeze_layers {n_frozen}: must be between 1 and {n - 1} (the "
                         f"model has {n} layers; at least the top one trains)")
    backbone.requires_grad_(False)
    for module in [*list(stack.layers)[n_frozen:], stack.norm]:
        module.requires_grad_(True)
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)


class CachedPairs(Dataset):
    """Training pairs with their frozen part's output: ``PairDataset`` rows plus ``hidden``
    (layer-N states of the pair's shared-prefix row, without padding)."""

    def __init__(self, pairs: PairDataset, hidden: list[torch.Tensor]) -> None:
        self.pairs, self.hidden = pairs, hidden

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.pairs[i], "hidden": self.hidden[i]}


class CachedCollator:
    """The reward collator's shared-prefix batch with the cached states as ``inputs_embeds``
    in place of ``input_ids`` (a pair's layout row does not depend on its batch)."""

    def __init__(self, base: RewardPairCollator, dtype: torch.dtype) -> None:
        self.base, self.dtype = base, dtype

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.base([{k: v for k, v in f.items() if k != "hidden"} for f in features])
        if "segments" not in batch:
            raise ValueError("a cached batch must take the shared-prefix layout")
        ids = batch.pop("input_ids")
        hidden = torch.zeros((*ids.shape, features[0]["hidden"].size(-1)), dtype=self.dtype)
        for row, f in enumerate(features):
            hidden[row, : len(f["hidden"])] = f["hidden"].to(self.dtype)
        batch["inputs_embeds"] = hidden
        return batch


@torch.no_grad()
def cache_frozen(model: nn.Module, pairs: PairDataset, collator: RewardPairCollator,
                 n_frozen: int, batch_size: int = 16) -> list[torch.Tensor]:
    """Layer-``n_frozen`` states of every pair's shared-prefix row (CACHE_DTYPE, CPU), in
    pair order; batches sorted by length so padding stays small. One log line per quarter."""
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: sum(
        len(pairs[i][f"{s}_input_ids"]) for s in ("original", "revised")))
    out: list[torch.Tensor] = [torch.zeros(0)] * len(pairs)
    was_training = model.training
    model.eval()
    start, quarter = time.perf_counter(), max(len(order) // 4, 1)
    try:
        with layer_slice(model.backbone, 0, n_frozen, final_norm=False):
            for k in range(0, len(order), batch_size):
                if k and k // quarter != (k - batch_size) // quarter:
                    logger.info("frozen layers: %d/%d pairs cached (%.0f s)", k, len(order),
                                time.perf_counter() - start)
                idx = order[k:k + batch_size]
                batch = collator([pairs[i] for i in idx])
                if "segments" not in batch:
                    raise ValueError("caching the frozen layers needs the shared-prefix layout")
                inputs = {name: batch[name].to(device) for name in
                          ("input_ids", "position_ids", "segments", "attention_mask",
                           "bidirectional") if name in batch}
                hidden = forward_shared(model.backbone, inputs, use_cache=False
                                        ).last_hidden_state
                for row, i in enumerate(idx):
                    n = int((batch["segments"][row] != -1).sum())
                    out[i] = hidden[row, :n].to("cpu", CACHE_DTYPE)
    finally:
        model.train(was_training)
    logger.info("frozen layers: %d pairs cached in %.0f s", len(order),
                time.perf_counter() - start)
    return out


def cacheable_layout(model: nn.Module, layout: PairLayout) -> str | None:
    """Why the frozen part cannot be cached for ``model`` under ``layout`` (None: it can)."""
    if layout.layout != "shared":
        return (f"pair_layout {layout.layout!r}: the cache holds shared-prefix rows "
                "(--pair_layout shared)" + (f"; {layout.fallback_reason}"
                                            if layout.fallback_reason else ""))
    if not layout.dense_mask:
        return "flex_attention (the cache is built with the dense mask)"
    return None
