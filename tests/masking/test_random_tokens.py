import pytest
import torch

from mimkit.masking import random_token_mask


def test_kept_count_and_mask_consistency():
    torch.manual_seed(0)
    n, length, ratio = 5, 49, 0.75
    m = random_token_mask(n, length, ratio)
    keep = int(length * (1 - ratio))  # 12
    assert m.ids_keep.shape == (n, keep)
    assert torch.all(m.mask.sum(1) == length - keep)
    for i in range(n):
        # kept ids are exactly the zeros of the mask
        assert set(m.ids_keep[i].tolist()) == set(torch.nonzero(m.mask[i] == 0).flatten().tolist())
        # ids_restore inverts the shuffle: position of token j in the shuffled order
        shuffled_mask = torch.cat([torch.zeros(keep), torch.ones(length - keep)])
        torch.testing.assert_close(torch.gather(shuffled_mask, 0, m.ids_restore[i]), m.mask[i])


def test_noise_gives_deterministic_hand_checked_mask():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    m = random_token_mask(1, 4, 0.5, noise=noise)
    assert m.ids_keep.tolist() == [[1, 3]]
    assert m.mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert m.ids_restore.tolist() == [[3, 0, 2, 1]]


def test_masks_independent_across_batch():
    torch.manual_seed(0)
    m = random_token_mask(64, 49, 0.75)
    distinct = {tuple(row.tolist()) for row in m.mask}
    assert len(distinct) == 64
    # every position is removed about 75% of the time over many samples
    freq = random_token_mask(4000, 49, 0.75).mask.mean(0)
    assert torch.all((freq > 0.68) & (freq < 0.82))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_rejected(ratio):
    with pytest.raises(ValueError, match="mask_ratio must be in \\(0, 1\\)"):
        random_token_mask(1, 4, ratio)


def test_noise_shape_checked():
    with pytest.raises(ValueError, match="noise must have shape"):
        random_token_mask(2, 4, 0.5, noise=torch.rand(2, 5))
