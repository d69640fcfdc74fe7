import pytest
import torch

from mimkit.masking import BlockMaskGenerator, block_mask


def cells_of(mask: torch.Tensor, scale: int) -> torch.Tensor:
    """[N, gh, gw] -> [N, ch, cw, scale * scale]: the tokens of each mask cell."""
    n, gh, gw = mask.shape
    x = mask.view(n, gh // scale, scale, gw // scale, scale).permute(0, 1, 3, 2, 4)
    return x.reshape(n, gh // scale, gw // scale, scale * scale)


# (grid, patch, mask_patch, ratio, masked cells worked out by hand)
CASES = [
    ((8, 8), 4, 8, 0.6, 10),  # 4x4 = 16 cells, 0.6 * 16 = 9.6 -> 10
    ((7, 7), 4, 4, 0.6, 30),  # 49 cells, 29.4 -> 30
    ((6, 10), 4, 8, 0.6, 9),  # non-square: 3x5 = 15 cells, 9.0 -> 9
    ((2, 5), 16, 16, 0.7, 7),  # non-square cells grid: 10 cells, 7.0 -> 7
    ((10, 10), 8, 16, 0.28, 7),  # 5x5 = 25 cells, 0.28 * 25 = 7 exactly (7.000000000000001 in floats)
    ((12, 12), 2, 8, 0.75, 7),  # 3x3 = 9 cells, 6.75 -> 7
    ((4, 4), 4, 4, 0.01, 1),  # 16 cells, 0.16 -> 1
]


@pytest.mark.parametrize("grid, patch, mask_patch, ratio, expected_cells", CASES)
def test_exact_count_alignment_and_shape(grid, patch, mask_patch, ratio, expected_cells):
    torch.manual_seed(0)
    gen = BlockMaskGenerator(grid, patch, mask_patch, ratio)
    mask = gen(32)
    scale = mask_patch // patch
    assert mask.shape == (32, *grid)
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    cells = cells_of(mask, scale)
    # every cell is all-masked or all-visible
    assert torch.all(cells.amin(-1) == cells.amax(-1))
    # exactly ceil(ratio * cells) cells per sample, each covering scale^2 tokens
    assert torch.all(cells[..., 0].flatten(1).sum(1) == expected_cells)
    assert torch.all(mask.flatten(1).sum(1) == expected_cells * scale * scale)


def test_non_square_grid_cells_follow_rows_and_columns():
    # 6x10 tokens, cells of 2x2 tokens -> 3 rows x 5 columns of cells; the upsampling must not mix axes
    gen = BlockMaskGenerator((6, 10), 4, 8, 0.5)
    mask = gen(16)
    cells = cells_of(mask, 2)[..., 0]  # [N, 3, 5]
    expected = cells.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(mask, expected)
    assert gen.cell_grid == (3, 5) and gen.num_cells == 15 and gen.num_masked_cells == 8


def test_samples_differ_and_every_cell_is_used_about_ratio_of_the_time():
    torch.manual_seed(0)
    gen = BlockMaskGenerator((8, 8), 4, 8, 0.6)  # 16 cells, 10 masked
    masks = gen(4000)
    distinct = {tuple(m.flatten().tolist()) for m in masks[:64]}
    assert len(distinct) > 60
    freq = cells_of(masks, 2)[..., 0].mean(0)  # [4, 4]
    assert torch.all((freq > 10 / 16 - 0.04) & (freq < 10 / 16 + 0.04))


def test_generator_makes_masks_reproducible():
    gen = BlockMaskGenerator((8, 8), 2, 4, 0.6)
    a = gen(5, generator=torch.Generator().manual_seed(3))
    b = gen(5, generator=torch.Generator().manual_seed(3))
    c = gen(5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(block_mask(5, 8, 2, 4, 0.6, generator=torch.Generator().manual_seed(3)), a)


def test_mask_patch_size_not_a_multiple_of_patch_size():
    with pytest.raises(ValueError, match=r"mask_patch_size 6 .*patch size 4"):
        BlockMaskGenerator((8, 8), 4, 6, 0.6)


def test_mask_cells_that_do_not_tile_the_grid_list_valid_sizes():
    # 28x28 image, patch 4 -> 7x7 tokens: 8 px cells (2 tokens) cannot tile 7; only 4 and 28 px can
    with pytest.raises(ValueError, match=r"mask_patch_size 8 .*28x28.*\[4, 28\]"):
        BlockMaskGenerator((7, 7), 4, 8, 0.6)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(ValueError, match=str(ratio)):
        BlockMaskGenerator((8, 8), 4, 8, ratio)
