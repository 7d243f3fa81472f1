"""Which layout a batch of edit pairs takes: decided once per model, then once per batch.

A trainer asks for a layout by name (its ``--pair_layout`` option) and gets a
:class:`PairLayout` for its model. The object says what the run will really do (a layout
the model cannot run falls back to padded, with the reason logged and kept), and chooses
per batch between the shared-prefix rows and the padded ones. The configuration is never
rewritten: ``args.pair_layout`` stays what the user asked for, ``PairLayout.layout`` is
what runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from editalign.batching.shared_prefix import (
    AUTO_SHARED_MAX_RATIO,
    layout_unsupported_reason,
    shared_prefix_ratio,
    uses_flex_attention,
)
from editalign.data.labeling import SIDES
from editalign.options import check_choice

logger = logging.getLogger(__name__)

# padded: 2B right-padded rows; packed: the 2B sequences in one row without padding;
# shared: one row per pair, [shared prefix | original suffix | revised suffix]; auto: shared
# for the batches where it computes at most AUTO_SHARED_MAX_RATIO of the padded positions.
PAIR_LAYOUTS = ("padded", "packed", "shared", "auto")
SHARED_LAYOUTS = ("shared", "auto")


@dataclass(frozen=True)
class PairLayout:
    """How a batch holds both sides of its pairs.

    ``layout`` is the one that runs (``padded`` when a requested shared layout is
    unavailable, with ``fallback_reason``; the config keeps what was asked). ``dense_mask`` is
    False under FlexAttention, which builds its ``BlockMask`` on the device from the
    batch's segments instead of shipping a ``(B, 1, L, L)`` mask.
    """

    layout: str = "padded"
    fallback_reason: str | None = None
    dense_mask: bool = True

    @classmethod
    def for_model(cls, requested: str, model: Any, world_size: int = 1,
                  choices: Sequence[str] = PAIR_LAYOUTS) -> PairLayout:
        """The layout ``model`` runs when ``requested`` is asked for.

        ``world_size`` > 1 rules the shared layout out for callers whose shared forward
        goes around the data-parallel wrapper (FIGA calls the unwrapped decoder to skip
        the full logits); the reward trainer calls the wrapped model and passes 1.
        """
        check_choice("pair_layout", requested, choices)
        reason = None
        if requested in SHARED_LAYOUTS:
            reason = layout_unsupported_reason(model)
            if reason is None and world_size > 1:
                reason = "more than one process (the layout bypasses the DDP wrapper's forward)"
            if reason is not None:
                logger.warning("pair_layout %s unavailable, using padded: %s", requested, reason)
        return cls(layout="padded" if reason else requested,
                   fallback_reason=reason, dense_mask=not uses_flex_attention(model))

    @property
    def packed(self) -> bool:
        return self.layout == "packed"

    def use_shared(self, features: Sequence[dict[str, Any]]) -> bool:
        """Whether this batch of feature dicts (``{side}_input_ids`` per pair) takes the
        shared-prefix layout."""
        if self.layout not in SHARED_LAYOUTS:
            return False
        # The layout needs two tokens per side (one predicted token); such degenerate sides
        # only come from a max_length below 2, and stay padded rather than failing the batch.
        if any(len(f[f"{name}_input_ids"]) < 2 for name in SIDES for f in features):
            return False
        return self.layout == "shared" or shared_prefix_ratio(features) <= AUTO_SHARED_MAX_RATIO


def is_shared_batch(inputs: dict[str, Any]) -> bool:
    """Whether a collated batch is in the shared-prefix layout (it carries its segments)."""
    return "segments" in inputs
