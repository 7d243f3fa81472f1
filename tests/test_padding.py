"""pad_rows (editalign.padding): the one padding helper, against hand-built batches."""

import pytest
import torch

from editalign.padding import pad_rows


def test_right_and_left_padding_by_hand():
    ids, mask = pad_rows([[1, 2, 3], [4]], 9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    ids, mask = pad_rows([[1, 2, 3], [4]], 9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_width_like_and_refusals():
    like = torch.zeros(1, dtype=torch.int32)
    ids, mask = pad_rows([[5]], 0, width=3, like=like)
    assert ids.tolist() == [[5, 0, 0]] and ids.dtype == mask.dtype == torch.int32
    assert pad_rows([], 0)[0].shape == (0, 0)
    with pytest.raises(ValueError, match="does not fit"):
        pad_rows([[1, 2]], 0, width=1)
    with pytest.raises(ValueError, match="side"):
        pad_rows([[1]], 0, side="middle")
