"""Padding rows of token ids into one batch: the one helper every hand-built batch uses.

    pad_rows(rows, pad_value, side="right") -> (ids (N, W), mask (N, W))

W is the longest row (or ``width``); ``mask`` is 1 on each row's tokens and 0 on its
padding. ``side="left"`` right-aligns the rows, the layout ``generate()`` wants for
prompts. The collators of :mod:`editalign.batching` pad pairs their own way (labels and
layouts beside the ids); everything else pads here.

Layer 0: it imports torch only, so the reward model, the reward sources, sampling, the
trainers and the benchmark can all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

SIDES = ("right", "left")


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int, *, side: str = "right",
             width: int | None = None, like: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``rows`` as one (N, W) batch of ``pad_value`` padding and its (N, W) attention mask.

    ``width`` defaults to the longest row (0 without rows); ``like``: a tensor whose dtype
    and device the batch takes (default: long on the CPU). Rows longer than ``width`` are
    refused, not cut.
    """
    if side not in SIDES:
        raise ValueError(f"side {side!r}: expected one of {', '.join(SIDES)}")
    longest = max((len(r) for r in rows), default=0)
    width = longest if width is None else width
    if longest > width:
        raise ValueError(f"a row of {longest} tokens does not fit width {width}")
    options: dict[str, Any] = ({"dtype": torch.long} if like is None else
                               {"dtype": like.dtype, "device": like.device})
    ids = torch.full((len(rows), width), pad_value, **options)
    mask = torch.zeros((len(rows), width), **options)
    for i, row in enumerate(rows):
        # A row's slots: the first len(row) columns, or (left) the last ones.
        slots = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, slots] = torch.as_tensor(row, dtype=ids.dtype)
        mask[i, slots] = 1
    return ids, mask
