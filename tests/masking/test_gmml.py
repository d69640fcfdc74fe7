"""GMML pixel-group corruption: area bounds, grid alignment, fills, reproducibility, bad input."""

import pytest
import torch

from mimkit.masking.gmml import gmml_corrupt, gmml_mask


def _areas(mask: torch.Tensor) -> torch.Tensor:
    return mask.mean(dim=(1, 2, 3))  # corrupted fraction per image


@pytest.mark.parametrize("max_ratio", [0.7, 0.3])
@pytest.mark.parametrize("align", [1, 4])
def test_area_within_bounds_over_many_draws(max_ratio, align):
    g = torch.Generator().manual_seed(0)
    masks = torch.cat([gmml_mask(400, (28, 28), max_ratio, align=align, generator=g) for _ in range(3)])
    assert masks.shape == (1200, 1, 28, 28)
    assert bool(((masks == 0) | (masks == 1)).all())
    area = _areas(masks)
    # Never past the max, whatever the target.
    assert area.max().item() <= max_ratio + 1e-6
    # Targets are U(0, max): the mean area sits near max / 2 (a little above: the last rectangle may
    # overshoot the image's own target) and the largest targets are actually reached.
    assert 0.45 * max_ratio <= area.mean().item() <= 0.62 * max_ratio
    assert torch.quantile(area, 0.95).item() >= 0.85 * max_ratio
    assert (area > 0).float().mean().item() > 0.99


def test_zero_ratio_corrupts_nothing():
    x = torch.randn(4, 1, 16, 16)
    corrupted, mask = gmml_corrupt(x, fill="noise", max_ratio=0.0)
    assert mask.sum().item() == 0
    assert torch.equal(corrupted, x)


def test_rectangles_are_groups_not_scattered_pixels():
    # One rectangle per image: the mask is exactly a filled axis-aligned box, sides <= 0.3 * 28 = 8.
    mask = gmml_mask(
        200, (28, 28), 0.5, max_side=0.3, max_rects=1, generator=torch.Generator().manual_seed(1)
    )[:, 0]
    for m in mask:
        rows = m.any(dim=1).nonzero().flatten()
        cols = m.any(dim=0).nonzero().flatten()
        if rows.numel() == 0:
            continue
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert h <= 8 and w <= 8
        assert m.sum().item() == h * w  # a full box: every pixel of the bounding box is set


def _cells_constant(mask: torch.Tensor, align: int) -> bool:
    n, _, h, w = mask.shape
    cells = mask.reshape(n, h // align, align, w // align, align)
    return bool((cells.amax(dim=(2, 4)) == cells.amin(dim=(2, 4))).all())


def test_alignment_snaps_to_the_grid():
    g = torch.Generator().manual_seed(2)
    aligned = gmml_mask(300, (28, 32), 0.7, align=4, generator=g)
    assert _cells_constant(aligned, 4)
    # The check can fail: unaligned rectangles cut through the 4x4 cells.
    unaligned = gmml_mask(300, (28, 32), 0.7, align=1, generator=g)
    assert not _cells_constant(unaligned, 4)


def test_replace_takes_pixels_from_another_image_never_the_same():
    n = 6
    values = torch.arange(n, dtype=torch.float32) * 10 + 100  # image i is the constant 100 + 10 i
    images = values.view(n, 1, 1, 1).expand(n, 3, 20, 20).clone()
    g = torch.Generator().manual_seed(3)
    seen_sources = set()
    for _ in range(20):
        corrupted, mask = gmml_corrupt(images, fill="replace", max_ratio=0.3, generator=g)
        assert mask.sum() > 0
        m = mask.expand_as(images).bool()
        for i in range(n):
            own = values[i].item()
            assert torch.all(corrupted[i][~m[i]] == own)  # untouched pixels unchanged
            pasted = corrupted[i][m[i]]
            assert torch.all(pasted != own)  # never from itself
            others = values[torch.arange(n) != i]
            assert torch.isin(pasted, others).all()  # always a pixel of another image
            seen_sources.update(pasted.unique().tolist())
    assert len(seen_sources) == n  # the source image varies between draws


def test_replace_with_two_images_swaps_them():
    images = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    corrupted, mask = gmml_corrupt(
        images, fill="replace", max_ratio=0.5, generator=torch.Generator().manual_seed(0)
    )
    m = mask.bool()
    assert torch.all(corrupted[0][m[0]] == 1) and torch.all(corrupted[1][m[1]] == 0)


def test_zeros_and_noise_fills():
    images = torch.full((64, 2, 16, 16), 5.0)
    g = torch.Generator().manual_seed(4)
    corrupted, mask = gmml_corrupt(images, fill="zeros", generator=g)
    m = mask.expand_as(images).bool()
    assert torch.all(corrupted[m] == 0) and torch.all(corrupted[~m] == 5.0)
    corrupted, mask = gmml_corrupt(images, fill="noise", noise_std=2.0, generator=g)
    m = mask.expand_as(images).bool()
    noise = corrupted[m]
    assert noise.numel() > 10_000 and torch.all(corrupted[~m] == 5.0)
    assert abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 2.0) < 0.1


def test_combined_fills_use_both_and_return_the_union():
    n = 8
    values = torch.arange(n, dtype=torch.float32) * 100 + 1000
    images = values.view(n, 1, 1, 1).expand(n, 1, 24, 24).clone()
    corrupted, mask = gmml_corrupt(
        images, fill=["noise", "replace"], max_ratio=[0.7, 0.3], generator=torch.Generator().manual_seed(5)
    )
    m = mask.expand_as(images).bool()
    assert torch.equal(corrupted[~m], images[~m])  # the mask covers every changed pixel
    is_noise = corrupted.abs() < 50  # N(0, 1) draws, far from every image constant
    is_pasted = torch.isin(corrupted, values) & (corrupted != values.view(n, 1, 1, 1))
    assert torch.all((is_noise | is_pasted) == m)  # every corrupted pixel is noise or another image
    assert is_noise.any() and is_pasted.any()
    assert _areas(mask).max().item() <= 1.0


def test_generator_makes_it_reproducible():
    x = torch.randn(5, 3, 16, 16)
    a = gmml_corrupt(x, generator=torch.Generator().manual_seed(7))
    b = gmml_corrupt(x, generator=torch.Generator().manual_seed(7))
    c = gmml_corrupt(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1])
def test_ratio_outside_unit_interval_is_an_error(bad):
    with pytest.raises(ValueError, match=str(bad)):
        gmml_corrupt(torch.randn(2, 1, 8, 8), fill="noise", max_ratio=bad)
    with pytest.raises(ValueError, match=str(bad)):
        gmml_corrupt(torch.randn(2, 1, 8, 8), fill=["noise", "replace"], max_ratio=[0.5, bad])


def test_replace_with_a_batch_of_one_is_an_error():
    with pytest.raises(ValueError, match="replace.*1 image"):
        gmml_corrupt(torch.randn(1, 1, 8, 8), fill="replace")
    gmml_corrupt(torch.randn(1, 1, 8, 8), fill="noise")  # fine without replace


def test_other_bad_inputs():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="'blur'"):
        gmml_corrupt(x, fill="blur")
    with pytest.raises(ValueError, match="align=3"):
        gmml_corrupt(x, align=3)
    with pytest.raises(ValueError, match="one value per fill"):
        gmml_corrupt(x, fill=["noise", "replace"], max_ratio=[0.5])
