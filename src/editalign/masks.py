"""Attention masks from per-position segments: the one rule behind the shared-prefix layout
and the whole-response reward context (layer 0: no editalign imports).

A row's positions carry segments: 0 the shared part every later segment may read (the
prompt, and in the shared-prefix layout the unedited response prefix), 1, 2, ... blocks that
read segment 0 and themselves but never each other, -1 padding. Query i may see key j ≤ i
when j is in segment 0 or in i's own segment (causal). With ``bidirectional`` a block also
sees its *later* tokens: every token of a response block reads the whole block, the
"bidirectional block" of a full-context token reward model. Padding sees only itself (a
row without any allowed key would give NaN in SDPA).

The mask reaches a model in the form its attention implementation takes: ``sdpa`` the
boolean ``(B, 1, L, L)`` mask (True = attend), ``eager`` the same as an additive float mask,
``flex_attention`` a ``BlockMask`` built from the segments.
"""

from __future__ import annotations

from typing import Any

import torch

FLEX_ATTENTION = "flex_attention"


def segment_mask(segments: torch.Tensor, bidirectional: bool = False) -> torch.Tensor:
    """Boolean ``(B, 1, L, L)`` mask from per-position segments ``(B, L)`` (rule above)."""
    length = segments.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    q, k = segments[:, :, None], segments[:, None, :]
    same_block = (q == k) & (q > 0)
    order = causal | same_block if bidirectional else causal
    allowed = order & ((k == 0) | (q == k)) & (q != -1) & (k != -1)
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device) & (q == -1)
    return allowed[:, None]


def segment_mask_mod(segments: torch.Tensor, bidirectional: bool = False) -> Any:
    """The rule of :func:`segment_mask` as a FlexAttention ``mask_mod`` over ``segments``:
    ``mask_mod(b, h, q, kv)`` is True where query q may see key kv."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor,
                 ) -> torch.Tensor:
        q_seg, kv_seg = segments[b, q], segments[b, kv]
        order = kv <= q
        if bidirectional:
            order = order | ((q_seg == kv_seg) & (q_seg > 0))
        sees = order & ((kv_seg == 0) | (q_seg == kv_seg)) & (q_seg != -1) & (kv_seg != -1)
        return sees | ((q == kv) & (q_seg == -1))  # padding sees itself

    return mask_mod


def segment_block_mask(segments: torch.Tensor, block_size: int = 128,
                       bidirectional: bool = False) -> Any:
    """The rule as a FlexAttention ``BlockMask`` on ``segments``' device; the kernel skips
    every (query block, key block) tile that is fully masked."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = segments.shape
    return create_block_mask(segment_mask_mod(segments, bidirectional), B=batch, H=None,
                             Q_LEN=length, KV_LEN=length, device=segments.device,
                             BLOCK_SIZE=block_size)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``mask`` is True, the dtype's minimum elsewhere (for eager attention)."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask, torch.finfo(dtype).min)


def is_causal_backbone(model: Any) -> bool:
    """Whether ``model`` attends causally (a decoder): some attention module says
    ``is_causal`` (every transformers decoder does; BERT-style encoders set it False)."""
    return any(getattr(m, "is_causal", False) is True for m in model.modules())


def attention_implementation(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


def uses_flex_attention(model: Any) -> bool:
    """True when ``model`` attends with FlexAttention (it then needs no dense mask)."""
    return attention_implementation(model) == FLEX_ATTENTION


def sliding_window(model: Any) -> int | None:
    """The window of ``model``'s sliding-window layers (Gemma 3: 5 of every 6), or None."""
    config = getattr(model, "config", None)
    if config is None or "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return None
    return getattr(config, "sliding_window", None)


def window_mask(mask: torch.Tensor, position_ids: torch.Tensor, window: int) -> torch.Tensor:
    """``mask`` limited to keys less than ``window`` positions away from the query (by
    position id, so a suffix after a shared prefix counts from the prefix): what a
    sliding-window layer sees (transformers' rule, ``kv > q - window``, both ways)."""
    distance = position_ids[:, :, None] - position_ids[:, None, :]
    near = (distance < window) & (-distance < window)
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return mask & (near[:, None] | eye)  # padding keeps seeing itself


def layout_attention_mask(model: Any, dense_mask: torch.Tensor | None,
                          segments: torch.Tensor | None, bidirectional: bool = False,
                          position_ids: torch.Tensor | None = None) -> Any:
    """The mask in the form ``model``'s attention implementation takes: a ``BlockMask`` for
    flex_attention (from ``segments``), the boolean 4-D mask for sdpa, the additive one for
    eager (from ``dense_mask``, or built from ``segments``).

    A model with sliding-window layers (Gemma 3) gets ``{"full_attention": mask,
    "sliding_attention": windowed mask}`` (its forward takes a mask per layer kind) when
    ``position_ids`` are given; a single custom mask would let those layers see too far.
    """
    if uses_flex_attention(model):
        if segments is None:
            raise ValueError("flex_attention needs the layout's segments to build its BlockMask")
        return segment_block_mask(segments, bidirectional=bidirectional)
    if dense_mask is None:
        if segments is None:
            raise ValueError("the shared-prefix layout needs its mask or its segments")
        dense_mask = segment_mask(segments, bidirectional)
    window = sliding_window(model)
    masks = {"full_attention": dense_mask}
    if window is not None and position_ids is not None:
        masks["sliding_attention"] = window_mask(dense_mask, position_ids.to(dense_mask.device),
                                                 window)
    if attention_implementation(model) == "eager":
        masks = {k: additive_mask(m, model.dtype) for k, m in masks.items()}
    return masks if len(masks) > 1 else masks["full_attention"]
