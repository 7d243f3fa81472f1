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

# The mask rule and its forms live in editalign.masks (the reward model uses them too);
# these names stay importable from here.
from editalign.masks import (  # noqa: F401
    FLEX_ATTENTION,
    additive_mask,
    attention_implementation,
    is_causal_backbone,
    layout_attention_mask,
    segment_block_mask,
    segment_mask,
    segment_mask_mod,
    uses_flex_attention,
)
from editalign.padding import pad_rows

# The order of the two suffixes in a layout row: the original's first. This is a row order,
# not the order of a pair's sides in a batch of rows (`editalign.data.labeling.SIDES`:
# revised, then original), which the collators use.
SUFFIX_ORDER = ("original", "revised")
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

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """What the model's forward takes from the layout (the collators add how their
        head reads it: FIGA's gather index, a reward model's token rows)."""
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids,
                  "segments": self.segments}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        return inputs


def build_shared_prefix_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                              pad_token_id: int = 0, dense_mask: bool = True,
                              max_prefix: Sequence[int] | None = None,
                              bidirectional: bool = False) -> SharedPrefixBatch:
    """Shared-prefix layout of ``(original_ids, revised_ids)`` pairs, right-padded.

    Identical sides give an empty suffix on both; a side that is a prefix of the other
    gives an empty suffix on that side. Padding positions attend only to themselves (a
    row without any allowed key would give NaN in SDPA) and are never gathered.
    ``dense_mask=False`` skips the ``(B, 1, L, L)`` mask (FlexAttention needs only the
    segments, and the dense mask grows with the square of the length).

    ``max_prefix[i]`` caps pair i's shared prefix (a whole-response reward model shares
    only the prompt: each side's response is its own suffix block), and ``bidirectional``
    makes each suffix a bidirectional block (:mod:`editalign.masks`).
    """
    if not pairs:
        raise ValueError("no pairs")
    laid = [_pair_row(list(original), list(revised),
                      None if max_prefix is None else max_prefix[i])
            for i, (original, revised) in enumerate(pairs)]
    input_ids, _ = pad_rows([row.ids for row in laid], pad_token_id)
    position_ids, _ = pad_rows([row.positions for row in laid], 0)
    seg_t, _ = pad_rows([row.segments for row in laid], -1)  # -1 = padding
    mask = shared_prefix_mask(seg_t, bidirectional) if dense_mask else None
    out_source, out_target, out_valid = {}, {}, {}
    for name in SUFFIX_ORDER:
        out_source[name], valid = pad_rows([row.sources[name] for row in laid], 0)
        out_target[name], _ = pad_rows([row.targets[name] for row in laid], 0)
        out_valid[name] = valid.bool()
    batch = SharedPrefixBatch(input_ids=input_ids, attention_mask=mask,
                              position_ids=position_ids,
                              prefix_lengths=[row.prefix for row in laid],
                              source=out_source, target=out_target, valid=out_valid,
                              segments=seg_t)
    batch.num_tokens = int((seg_t != -1).sum())
    return batch


@dataclass
class _PairRow:
    """One pair's row before padding: ids, positions, segments, and per side the row
    positions its predictions are read from and the tokens they predict."""

    ids: list[int]
    positions: list[int]
    segments: list[int]
    prefix: int
    sources: dict[str, list[int]]
    targets: dict[str, list[int]]


def _pair_row(original: list[int], revised: list[int], cap: int | None) -> _PairRow:
    if len(original) < 2 or len(revised) < 2:
        raise ValueError("every side needs at least two tokens (one predicted token)")
    p = common_prefix_length(original, revised)
    if cap is not None:
        p = min(p, cap)
    row = _PairRow(ids=original[:p], positions=list(range(p)),
                   segments=[0] * p,  # 0 = prefix, 1 = original suffix, 2 = revised suffix
                   prefix=p, sources={}, targets={})
    for k, side_ids in enumerate((original, revised), start=1):
        offset = len(row.ids)  # row position of this side's token p
        row.ids += side_ids[p:]
        row.positions += range(p, len(side_ids))
        row.segments += [k] * (len(side_ids) - p)
        # row position of side token t: t if t < p else offset + t - p
        row_of = [t if t < p else offset + t - p for t in range(len(side_ids))]
        name = SUFFIX_ORDER[k - 1]
        row.sources[name] = row_of[:-1]  # token t+1 is predicted from token t's row
        row.targets[name] = side_ids[1:]
    return row


def side_token_rows(original: Sequence[int], revised: Sequence[int],
                    max_prefix: int | None = None) -> tuple[list[int], list[int]]:
    """Row position of every token of each side in the pair's row of
    :func:`build_shared_prefix_batch`, ``(original_rows, revised_rows)``.

    Unlike ``SharedPrefixBatch.source`` (the shifted next-token convention of a language
    model) this is the position of the token itself, where a per-position head (a token
    reward model) reads that token's output. The original suffix follows the prefix, so its
    tokens keep their own index; the revised suffix starts after the original one.
    ``max_prefix`` caps the shared prefix as in :func:`build_shared_prefix_batch`.
    """
    p = common_prefix_length(original, revised)
    if max_prefix is not None:
        p = min(p, max_prefix)
    offset = len(original)  # row position of revised token p: prefix + original suffix
    return (list(range(len(original))),
            [t if t < p else offset + t - p for t in range(len(revised))])


def shared_prefix_mask(segments: torch.Tensor, bidirectional: bool = False) -> torch.Tensor:
    """Boolean ``(B, 1, L, L)`` mask from per-position segments ``(B, L)``.

    Segment 0 is the shared prefix, 1 and 2 the two suffixes, -1 padding. Query i may see
    key j ≤ i when j is in the prefix or in i's own segment; padding sees only itself. With
    ``bidirectional`` each suffix also sees its own later tokens (``editalign.masks``).
    """
    return segment_mask(segments, bidirectional)


def shared_prefix_mask_mod(segments: torch.Tensor, bidirectional: bool = False) -> Any:
    """The rule of :func:`shared_prefix_mask` as a FlexAttention ``mask_mod`` over
    ``segments`` ``(B, L)``: ``mask_mod(b, h, q, kv)`` is True where query q may see key kv."""
    return segment_mask_mod(segments, bidirectional)


def shared_prefix_block_mask(segments: torch.Tensor, block_size: int = 128,
                             bidirectional: bool = False) -> Any:
    """The layout's mask as a FlexAttention ``BlockMask`` on ``segments``' device.

    Document-style: each suffix sees the shared prefix and itself causally, padding sees
    only itself. The block structure lets the kernel skip every (query block, key block)
    tile that is fully masked, e.g. the revised suffix's queries against the original
    suffix's keys.
    """
    return segment_block_mask(segments, block_size, bidirectional)


def layout_unsupported_reason(model: Any) -> str | None:
    """Why ``model`` cannot run the shared-prefix layout, or None when it can."""
    impl = attention_implementation(model)
    if hasattr(model, "modules") and not is_causal_backbone(model):
        return ("an encoder backbone (bidirectional attention): its prompt reads the response, "
                "so the two sides cannot share a prefix")
    if impl in MASK_ATTENTION:
        return None
    return (f"attention implementation {impl!r} does not take the layout's mask "
            f"(supported: {', '.join(MASK_ATTENTION)})")


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
    # A full-context reward model's rows read their own suffix both ways (bidirectional).
    bidirectional = bool(inputs.get("bidirectional", False))
    mask = layout_attention_mask(owner, inputs.get("attention_mask"), inputs.get("segments"),
                                 bidirectional, inputs.get("position_ids"))
    # inputs_embeds: states computed elsewhere (the cached frozen layers of a reward model)
    tokens = ({"inputs_embeds": inputs["inputs_embeds"]} if "inputs_embeds" in inputs
              else {"input_ids": inputs["input_ids"]})
    return module(**tokens, attention_mask=mask, position_ids=inputs["position_ids"], **kwargs)


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
