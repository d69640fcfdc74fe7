import pytest
import torch

from mimkit.masking import check_token_mask, token_mask_from


def test_token_mask_from_a_hand_checked_mask():
    m = token_mask_from(torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    assert m.ids_keep.tolist() == [[1, 3]]  # the visible patches, in patch order
    # shuffled order is (1, 3, 0, 2): patch 0 sits at position 2, patch 1 at 0, patch 2 at 3, patch 3 at 1
    assert m.ids_restore.tolist() == [[2, 0, 3, 1]]
    assert m.mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_token_mask_refusals():
    with pytest.raises(ValueError, match=r"same number of patches, got \[1, 2\]"):
        token_mask_from(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[N, gh, gw\] = \(1, 2, 2\), got \(1, 3\)"):
        check_token_mask(torch.zeros(1, 3), 1, (2, 2))
    with pytest.raises(ValueError, match="0 \\(visible\\) or 1"):
        check_token_mask(torch.full((1, 2, 2), 0.5), 1, (2, 2))
    assert check_token_mask(torch.eye(2).unsqueeze(0), 1, (2, 2)).tolist() == [[1.0, 0.0, 0.0, 1.0]]
