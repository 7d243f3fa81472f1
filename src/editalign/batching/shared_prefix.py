"""Shared-prefix pair layout: the prompt and the unedited response prefix computed once.

Both sides of an edit pair share their prompt and, because the edit is minimal, every
token up to the first edited one. Instead of two rows (padded) or two packed sequences,
a pair becomes one row::

    [ shared prefix | original suffix | revised suffix ]

where the shared prefix is the longest common prefix (LCP) of the two sides'
``input_ids``. The attention mask lets every suffix token see the prefix and the earlier
tokens of its own suffix (causally), never the other suffix; position ids continue from
the prefix in both suffixes. A causal LM therefore computes, at every position, exactly
the hidden state it computes for that token in a separate pass over the side.

Per-token log-probabilities are gathered per side in the collator's *shifted*
convention (entry ``t`` is ``log p(token t+1 | tokens ≤ t)``). The first token of a
suffix is predicted from the **last prefix position**, which both sides share: its
source index is ``p - 1`` for both sides, not a position inside the suffix.

Pure functions only. The mask reaches the model as its ``attention_mask`` (transformers
passes a 4-D tensor or a FlexAttention ``BlockMask`` through as-is), in the form the
attention implementation takes: ``sdpa`` a dense boolean ``(B, 1, L, L)`` mask (True =
attend), ``eager`` the same as an additive float mask, ``flex_attention`` a ``BlockMask``
built from the per-position segments (:func:`shared_prefix_block_mask`; on a GPU the fused
kernel skips the blocks no query of a block may see, and SDPA's dense mask would shut it
out of its flash kernel). Other implementations (flash-attention varlen) are reported by
:func:`layout_unsupported_reason` so callers fall back to the padded layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# The order of the two suffixes in a layout row: the original's first. This is a row order,
# not the order of a pair's sides in a batch of rows (`editalign.data.labeling.SIDES`:
# revised, then original), which the collators use.
SUFFIX_ORDER = ("original", "revised")
FLEX_ATTENTION = "flex_attention"
# Attention implementations known to apply the layout's mask exactly (dense 4-D or BlockMask).
MASK_ATTENTION = ("sdpa", "eager", FLEX_ATTENTION)
# pair_layout auto (FIGA and reward models): shared-prefix batches where they are at most this
# fraction of the padded size, else padded (benchmarks/pair_layout_speed.py: shared won at size
# ratios 0.57 (0.56-0.61x time) and 0.78 on SmolLM2 (0.80x), tied at 0.84 on the tiny model
# (1.03x)).
AUTO_SHARED_MAX_RATIO = 0.8


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class SharedPrefixBatch:
    """One row per pair. ``attention_mask`` is boolean ``(B, 1, L, L)`` (True = attend), or
    None when built with ``dense_mask=False`` (FlexAttention builds its mask from
    ``segments`` ``(B, L)``: 0 prefix, 1 original suffix, 2 revised suffix, -1 padding).

    ``source[side]`` ``(B, T_side)``: the row position whose output predicts token t+1 of
    that side (shifted convention); ``target[side]``: that token; ``valid[side]``: False
    on padding (source/target are 0 there).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    prefix_lengths: list[int]
    source: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    num_tokens: int = 0  # non-pad tokens: what the forward pass really computes
    segments: torch.Tensor | None = None


def build_shared_prefix_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                              pad_token_id: int = 0, dense_mask: bool = True,
                              ) -> SharedPrefixBatch:
    """Shared-prefix layout of ``(original_ids, revised_ids)`` pairs, right-padded.

    Identical sides give an empty suffix on both; a side that is a prefix of the other
    gives an empty suffix on that side. Padding positions attend only to themselves (a
    row without any allowed key would give NaN in SDPA) and are never gathered.
    ``dense_mask=False`` skips the ``(B, 1, L, L)`` mask (FlexAttention needs only the
    segments, and the dense mask grows with the square of the length).
    """
    if not pairs:
        raise ValueError("no pairs")
    rows, positions, segments, prefixes = [], [], [], []
    sources: dict[str, list[list[int]]] = {s: [] for s in SUFFIX_ORDER}
    targets: dict[str, list[list[int]]] = {s: [] for s in SUFFIX_ORDER}
    for original, revised in pairs:
        original, revised = list(original), list(revised)
        if len(original) < 2 or len(revised) < 2:
            raise ValueError("every side needs at least two tokens (one predicted token)")
        p = common_prefix_length(original, revised)
        ids = original[:p]
        pos = list(range(p))
        seg = [0] * p  # 0 = prefix, 1 = original suffix, 2 = revised suffix
        for k, side_ids in enumerate((original, revised), start=1):
            offset = len(ids)  # row position of this side's token p
            ids += side_ids[p:]
            pos += range(p, len(side_ids))
            seg += [k] * (len(side_ids) - p)
            # row position of side token t: t if t < p else offset + t - p
            row_of = [t if t < p else offset + t - p for t in range(len(side_ids))]
            name = SUFFIX_ORDER[k - 1]
            sources[name].append(row_of[:-1])  # token t+1 is predicted from token t's row
            targets[name].append(side_ids[1:])
        rows.append(ids)
        positions.append(pos)
        segments.append(seg)
        prefixes.append(p)
    b, length = len(rows), max(map(len, rows))
    input_ids = torch.full((b, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((b, length), dtype=torch.long)
    seg_t = torch.full((b, length), -1, dtype=torch.long)  # -1 = padding
    for i, (ids, pos, seg) in enumerate(zip(rows, positions, segments, strict=True)):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        position_ids[i, :len(pos)] = torch.tensor(pos)
        seg_t[i, :len(seg)] = torch.tensor(seg)
    mask = shared_prefix_mask(seg_t) if dense_mask else None
    out_source, out_target, out_valid = {}, {}, {}
    for name in SUFFIX_ORDER:
        t_max = max(map(len, sources[name]))
        src = torch.zeros((b, t_max), dtype=torch.long)
        tgt = torch.zeros((b, t_max), dtype=torch.long)
        val = torch.zeros((b, t_max), dtype=torch.bool)
        for i, (s, t) in enumerate(zip(sources[name], targets[name], strict=True)):
            src[i, :len(s)] = torch.tensor(s)
            tgt[i, :len(t)] = torch.tensor(t)
            val[i, :len(s)] = True
        out_source[name], out_target[name], out_valid[name] = src, tgt, val
    batch = SharedPrefixBatch(input_ids=input_ids, attention_mask=mask,
                              position_ids=position_ids, prefix_lengths=prefixes,
                              source=out_source, target=out_target, valid=out_valid,
                              segments=seg_t)
    batch.num_tokens = int((seg_t != -1).sum())
    return batch


def side_token_rows(original: Sequence[int], revised: Sequence[int],
                    ) -> tuple[list[int], list[int]]:
    """Row position of every token of each side in the pair's row of
    :func:`build_shared_prefix_batch`, ``(original_rows, revised_rows)``.

    Unlike ``SharedPrefixBatch.source`` (the shifted next-token convention of a language
    model) this is the position of the token itself, where a per-position head (a token
    reward model) reads that token's output. The original suffix follows the prefix, so its
    tokens keep their own index; the revised suffix starts after the original one.
    """
    p = common_prefix_length(original, revised)
    offset = len(original)  # row position of revised token p: prefix + original suffix
    return (list(range(len(original))),
            [t if t < p else offset + t - p for t in range(len(revised))])


def shared_prefix_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, 1, L, L)`` mask from per-position segments ``(B, L)``.

    Segment 0 is the shared prefix, 1 and 2 the two suffixes, -1 padding. Query i may see
    key j ≤ i when j is in the prefix or in i's own segment; padding sees only itself.
    """
    length = segments.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    q, k = segments[:, :, None], segments[:, None, :]
    allowed = causal & ((k == 0) | (q == k)) & (q != -1) & (k != -1)
    allowed |= torch.eye(length, dtype=torch.bool) & (q == -1)
    return allowed[:, None]


def shared_prefix_mask_mod(segments: torch.Tensor) -> Any:
    """The rule of :func:`shared_prefix_mask` as a FlexAttention ``mask_mod`` over
    ``segments`` ``(B, L)``: ``mask_mod(b, h, q, kv)`` is True where query q may see key kv."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor,
                 ) -> torch.Tensor:
        q_seg, kv_seg = segments[b, q], segments[b, kv]
        sees = ((kv <= q) & ((kv_seg == 0) | (q_seg == kv_seg))
                & (q_seg != -1) & (kv_seg != -1))
        return sees | ((q == kv) & (q_seg == -1))  # padding sees itself

    return mask_mod


def shared_prefix_block_mask(segments: torch.Tensor, block_size: int = 128) -> Any:
    """The layout's mask as a FlexAttention ``BlockMask`` on ``segments``' device.

    Document-style: each suffix sees the shared prefix and itself causally, padding sees
    only itself. The block structure lets the kernel skip every (query block, key block)
    tile that is fully masked, e.g. the revised suffix's queries against the original
    suffix's keys.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = segments.shape
    return create_block_mask(shared_prefix_mask_mod(segments), B=batch, H=None,
                             Q_LEN=length, KV_LEN=length, device=segments.device,
                             BLOCK_SIZE=block_size)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``mask`` is True, the dtype's minimum elsewhere (for eager attention)."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask, torch.finfo(dtype).min)


def attention_implementation(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


def layout_unsupported_reason(model: Any) -> str | None:
    """Why ``model`` cannot run the shared-prefix layout, or None when it can."""
    impl = attention_implementation(model)
    if impl in MASK_ATTENTION:
        return None
    return (f"attention implementation {impl!r} does not take the layout's mask "
            f"(supported: {', '.join(MASK_ATTENTION)})")


def uses_flex_attention(model: Any) -> bool:
    """True when ``model`` attends with FlexAttention (the layout then needs no dense mask)."""
    return attention_implementation(model) == FLEX_ATTENTION


def layout_attention_mask(model: Any, dense_mask: torch.Tensor | None,
                          segments: torch.Tensor | None) -> Any:
    """The layout's mask in the form ``model``'s attention implementation takes: a
    ``BlockMask`` for flex_attention (from ``segments``), the boolean 4-D mask for sdpa,
    the additive one for eager (from ``dense_mask``, or built from ``segments``)."""
    if uses_flex_attention(model):
        if segments is None:
            raise ValueError("flex_attention needs the layout's segments to build its BlockMask")
        return shared_prefix_block_mask(segments)
    if dense_mask is None:
        if segments is None:
            raise ValueError("the shared-prefix layout needs its mask or its segments")
        dense_mask = shared_prefix_mask(segments)
    if attention_implementation(model) == "eager":
        return additive_mask(dense_mask, model.dtype)
    return dense_mask


def model_mask(model: Any, batch: SharedPrefixBatch) -> Any:
    """The mask in the form ``model``'s attention implementation expects, on its device."""
    device = model.device
    return layout_attention_mask(
        model, None if batch.attention_mask is None else batch.attention_mask.to(device),
        None if batch.segments is None else batch.segments.to(device))


def gather_rows(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``hidden[b, index[b, t]]`` for ``hidden (B, L, ...)`` and ``index (B, T)``."""
    expand = index.reshape(*index.shape, *([1] * (hidden.dim() - 2)))
    expand = expand.expand(*index.shape, *hidden.shape[2:])
    return hidden.gather(1, expand)


def side_logprobs(logits: torch.Tensor, batch: SharedPrefixBatch) -> dict[str, torch.Tensor]:
    """Per side ``(B, T_side)`` log-probabilities of the next token (0 on padding)."""
    out = {}
    for name in SUFFIX_ORDER:
        rows = gather_rows(logits, batch.source[name]).float().log_softmax(-1)
        logp = rows.gather(-1, batch.target[name][..., None]).squeeze(-1)
        out[name] = logp.masked_fill(~batch.valid[name], 0.0)
    return out


def forward_shared(module: Any, inputs: dict[str, Any], attention_of: Any = None,
                   **kwargs: Any) -> Any:
    """Call ``module`` on shared-prefix inputs: the one forward pass of the layout.

    ``inputs`` holds ``input_ids``, ``position_ids`` and ``segments`` (and the dense
    ``attention_mask`` unless it was built for FlexAttention), on the module's device. The
    mask reaches the module in the form the attention implementation of ``attention_of``
    (default ``module``; the backbone when ``module`` is a wrapper around it) takes: a
    ``BlockMask`` built here from the segments for flex_attention, the boolean 4-D mask for
    sdpa, the additive one for eager. Extra ``kwargs`` go to the module (``use_cache=False``).
    """
    owner = module if attention_of is None else attention_of
    mask = layout_attention_mask(owner, inputs.get("attention_mask"), inputs.get("segments"))
    return module(input_ids=inputs["input_ids"], attention_mask=mask,
                  position_ids=inputs["position_ids"], **kwargs)


def shared_prefix_forward(model: Any, batch: SharedPrefixBatch) -> dict[str, torch.Tensor]:
    """Forward ``model`` on the layout and return :func:`side_logprobs` (full logits)."""
    reason = layout_unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"shared-prefix layout unavailable: {reason}")
    device = model.device

    def to_device(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    inputs = {"input_ids": to_device(batch.input_ids), "position_ids": to_device(batch.position_ids),
              "attention_mask": to_device(batch.attention_mask),
              "segments": to_device(batch.segments)}
    out = forward_shared(model, inputs, use_cache=False)
    moved = SharedPrefixBatch(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask,
        position_ids=batch.position_ids, prefix_lengths=batch.prefix_lengths,
        segments=batch.segments, source={k: v.to(device) for k, v in batch.source.items()},
        target={k: v.to(device) for k, v in batch.target.items()},
        valid={k: v.to(device) for k, v in batch.valid.items()})
    return side_logprobs(out.logits, moved)


def shared_prefix_ratio(features: Sequence[dict[str, Any]]) -> float:
    """Positions of the shared-prefix layout / positions of the padded layout (both padded
    to a rectangle) for feature dicts with ``original_input_ids``/``revised_input_ids``:
    under 1 the shared layout computes less."""
    shared = padded = 0
    for f in features:
        o, r = f["original_input_ids"], f["revised_input_ids"]
        shared = max(shared, len(o) + len(r) - common_prefix_length(o, r))
        padded = max(padded, len(o), len(r))
    return shared / (2 * padded)
