import math

import pytest
import torch

from mimkit.models.pos_embed import resample_pos_embed, sincos_2d


def reference_value(dim: int, row: int, col: int, channel: int) -> float:
    """The MAE layout written out channel by channel: [sin(col w), cos(col w), sin(row w), cos(row w)]."""
    quarter = dim // 4
    half_index, within = divmod(channel, dim // 2)
    pos = col if half_index == 0 else row
    fn = math.sin if within < quarter else math.cos
    i = within % quarter
    return fn(pos / 10000 ** (i / quarter))


@pytest.mark.parametrize("grid", [(3, 3), (2, 5), (4, 1)])
def test_sincos_matches_formula(grid):
    dim = 16
    emb = sincos_2d(dim, grid, cls_token=True)
    assert emb.shape == (1 + grid[0] * grid[1], dim)
    assert torch.all(emb[0] == 0)
    for row in range(grid[0]):
        for col in range(grid[1]):
            token = 1 + row * grid[1] + col
            expected = torch.tensor([reference_value(dim, row, col, c) for c in range(dim)])
            torch.testing.assert_close(emb[token].double(), expected.double(), atol=1e-6, rtol=0)


def test_first_half_encodes_column_not_row():
    emb = sincos_2d(8, (2, 3))
    # tokens (row 0, col 1) and (row 1, col 1) share the column: identical first half
    torch.testing.assert_close(emb[1, :4], emb[4, :4])
    assert not torch.allclose(emb[1, 4:], emb[4, 4:])


def test_width_must_be_multiple_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(6, (2, 2))


def test_resample_identity_and_shape():
    pe = sincos_2d(16, (4, 4), cls_token=True).unsqueeze(0)
    assert resample_pos_embed(pe, (4, 4)) is pe
    out = resample_pos_embed(pe, (6, 3))
    assert out.shape == (1, 1 + 18, 16)
    torch.testing.assert_close(out[:, 0], pe[:, 0])  # the class slot is untouched


def test_resample_constant_grid_stays_constant():
    # bicubic interpolation of a constant field is that constant
    pe = torch.cat([torch.zeros(1, 1, 4), torch.full((1, 9, 4), 0.5)], dim=1)
    out = resample_pos_embed(pe, (5, 5))
    torch.testing.assert_close(out[:, 1:], torch.full((1, 25, 4), 0.5))
