"""Group masked model learning (GMML) corruption: Atito et al., 2021, "SiT: Self-supervised vIsion
Transformer".

Connected groups of pixels are corrupted: random rectangles, each side up to ``max_side`` of the image,
are placed until the corrupted area reaches a per-image target drawn uniformly from ``[0, max_ratio]``.
The corrupted pixels are filled with zeros, Gaussian noise, or the pixels at the same place in another
image of the batch; several fills can be combined (the paper's best is noise + replace).

Everything runs batched on the images' device: one loop over a fixed number of rectangle draws, each a
tensor operation over the whole batch. Written by hand because the corruption is the core of the method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mimkit import rng

FILLS = ("zeros", "noise", "replace")
# Largest target area per fill (docs/methods.md: up to ~70% for noise / zeros, ~30% for replacement).
DEFAULT_MAX_RATIO = {"zeros": 0.7, "noise": 0.7, "replace": 0.3}


def check_fills(fill: str | Sequence[str]) -> tuple[str, ...]:
    """``"noise"`` or ``["noise", "replace"]`` -> a tuple of valid fill names (ValueError otherwise)."""
    fills = (fill,) if isinstance(fill, str) else tuple(fill)
    if not fills or any(f not in FILLS for f in fills) or len(set(fills)) != len(fills):
        raise ValueError(
            f"fill must be one of {list(FILLS)} or a list of distinct ones (e.g. ['noise', 'replace']), "
            f"got {fill!r}"
        )
    return fills


def check_max_ratios(fills: tuple[str, ...], max_ratio: float | Sequence[float] | None) -> tuple[float, ...]:
    """One max ratio per fill, each in ``[0, 1)``; ``None`` takes :data:`DEFAULT_MAX_RATIO`."""
    if max_ratio is None:
        ratios = tuple(DEFAULT_MAX_RATIO[f] for f in fills)
    elif isinstance(max_ratio, (int, float)):
        ratios = (float(max_ratio),) * len(fills)
    else:
        ratios = tuple(max_ratio)
        if len(ratios) != len(fills):
            raise ValueError(
                f"max_ratio {list(ratios)} must have one value per fill {list(fills)} (or be a single number)"
            )
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            raise ValueError(f"corruption ratio must be in [0, 1), got {r!r} (max_ratio={max_ratio!r})")
    return tuple(float(r) for r in ratios)


MAX_RECTS = 64  # rectangles drawn per image (the union stops growing once it covers the target area)


def check_geometry(size: tuple[int, int], max_side: float, align: int, max_rects: int) -> None:
    """ValueError unless ``max_side`` is in (0, 1], ``align`` divides ``size``, ``max_rects`` is in 1..255."""
    if isinstance(max_side, bool) or not isinstance(max_side, (int, float)) or not 0.0 < max_side <= 1.0:
        raise ValueError(f"max_side must be a fraction of the image side in (0, 1], got {max_side!r}")
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise ValueError(f"align must be a positive int (1 = no grid, or the patch size), got {align!r}")
    h, w = size
    if h % align or w % align:
        raise ValueError(
            f"image size {h}x{w} is not divisible by align={align}; use align=1 or the patch size"
        )
    if isinstance(max_rects, bool) or not isinstance(max_rects, int) or not 1 <= max_rects <= 255:
        raise ValueError(f"max_rects must be an int in 1..255, got {max_rects!r}")


def gmml_mask(
    batch_size: int,
    size: tuple[int, int],
    max_ratio: float,
    max_side: float = 0.3,
    align: int = 1,
    max_rects: int = MAX_RECTS,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image unions of random rectangles covering up to a random target area.

    Each image draws a target ``t ~ U(0, max_ratio)`` and a sequence of ``max_rects`` rectangles (sides
    uniform in ``1..max_side * side`` grid cells, position uniform), and keeps the shortest prefix of the
    sequence whose union reaches ``t``, stopping earlier if the next rectangle would push the area past
    ``max_ratio``: the area can overshoot the image's target (as placing rectangles "until the target is
    reached" does) but never ``max_ratio``. With ``align > 1`` the rectangles live on the grid of
    ``align x align`` cells (``align`` = patch size snaps them to patches).

    Batched without a loop over rectangles: each cell records the index of the first rectangle that
    covers it, so the area of every prefix is a cumulative histogram of those indices.

    Args:
        batch_size: ``N``.
        size: ``(H, W)`` in pixels, divisible by ``align``.
        max_ratio: largest corrupted fraction, in ``[0, 1)``.
        max_side: largest rectangle side as a fraction of the image side (per axis).
        align: grid cell side in pixels (1 = pixel precision).
        max_rects: rectangles drawn per image (a fixed number: the cost does not depend on the data).
        device: where the mask is built.
        generator: optional, for reproducible masks; the draws happen on its device.

    Returns:
        ``[N, 1, H, W]`` float mask, 1 = corrupted.
    """
    (ratio,) = check_max_ratios(("zeros",), max_ratio)
    check_geometry(size, max_side, align, max_rects)
    n, t_max = batch_size, max_rects
    gh, gw = size[0] // align, size[1] // align
    max_h, max_w = max(1, int(max_side * gh)), max(1, int(max_side * gw))
    rand_device = generator.device if generator is not None else device

    def uniform(*shape: int) -> torch.Tensor:
        return rng.rand(*shape, generator=generator, device=rand_device).to(device)

    # All draws at once, so a CPU generator means a few copies, not one per rectangle.
    target = uniform(n) * ratio  # [N]
    rect_h = 1 + (uniform(n, t_max) * max_h).long().clamp_max(max_h - 1)  # [N, T], in cells
    rect_w = 1 + (uniform(n, t_max) * max_w).long().clamp_max(max_w - 1)
    top = (uniform(n, t_max) * (gh - rect_h + 1)).long()  # [N, T], 0 .. gh - h
    left = (uniform(n, t_max) * (gw - rect_w + 1)).long()

    rows = torch.arange(gh, device=device)
    cols = torch.arange(gw, device=device)
    in_rows = (rows >= top[..., None]) & (rows < (top + rect_h)[..., None])  # [N, T, gh]
    in_cols = (cols >= left[..., None]) & (cols < (left + rect_w)[..., None])  # [N, T, gw]
    # first[n, y, x]: index of the first rectangle covering the cell, T if none. Chunks over T bound
    # the [N, chunk, gh, gw] temporary to ~32M bytes.
    order = torch.arange(t_max, device=device, dtype=torch.uint8)
    first = torch.full((n, gh, gw), t_max, dtype=torch.uint8, device=device)
    chunk = max(1, (1 << 25) // max(1, n * gh * gw))
    for start in range(0, t_max, chunk):
        covered = in_rows[:, start : start + chunk, :, None] & in_cols[:, start : start + chunk, None, :]
        index = torch.where(covered, order[start : start + chunk, None, None], t_max)  # [N, c, gh, gw]
        first = torch.minimum(first, index.amin(dim=1).to(torch.uint8))
    # area[n, k] = fraction covered by the first k + 1 rectangles.
    counts = torch.zeros(n, t_max + 1, device=device)
    counts.scatter_add_(1, first.view(n, -1).long(), torch.ones(n, gh * gw, device=device))
    area = counts[:, :t_max].cumsum(dim=1) / (gh * gw)  # [N, T], non-decreasing
    # Keep k rectangles: the fewest whose union reaches the target, and never one past max_ratio
    # (the epsilon lets an area equal to max_ratio through despite float rounding).
    reach = 1 + (area < target[:, None]).sum(dim=1)  # [N], in 1..T+1
    fits = (area <= ratio + 1e-6).sum(dim=1)  # [N], area is monotone so these are a prefix
    keep = torch.minimum(torch.minimum(reach, fits), torch.full_like(fits, t_max))
    keep = torch.where(target > 0, keep, torch.zeros_like(keep))  # a zero target corrupts nothing
    mask = first.long() < keep[:, None, None]  # [N, gh, gw]
    mask = mask.repeat_interleave(align, dim=1).repeat_interleave(align, dim=2)  # [N, H, W]
    return mask.unsqueeze(1).float()


def gmml_corrupt(
    images: torch.Tensor,
    fill: str | Sequence[str] = ("noise", "replace"),
    max_ratio: float | Sequence[float] | None = None,
    max_side: float = 0.3,
    align: int = 1,
    noise_std: float = 1.0,
    max_rects: int = MAX_RECTS,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt groups of pixels, batched on the images' device.

    Fills are applied one after the other, each with its own mask (:func:`gmml_mask`) and its own max
    ratio; the returned mask is their union. ``"zeros"`` writes 0 (the mean pixel for normalised
    images), ``"noise"`` writes ``N(0, noise_std^2)`` (normalised images have unit variance), and
    ``"replace"`` copies the pixels at the same place from the clean image ``(i + s) mod N`` with one
    random shift ``s`` in ``1..N-1`` for the batch: a derangement, so never from the image itself.

    Args:
        images: ``[N, C, H, W]`` (normalised).
        fill: one of ``"zeros"``, ``"noise"``, ``"replace"``, or a list of distinct ones.
        max_ratio: largest corrupted fraction per fill, in ``[0, 1)``: one number for all fills, one per
            fill, or ``None`` for the defaults (0.7 zeros / noise, 0.3 replace).
        max_side: largest rectangle side as a fraction of the image side.
        align: 1 (unaligned, the default: better on small data) or the patch size (snap to patches).
        noise_std: standard deviation of the ``"noise"`` fill.
        max_rects: rectangle draws per fill.
        generator: optional, for a reproducible corruption (draws happen on its device).

    Returns:
        ``(corrupted [N, C, H, W], mask [N, 1, H, W])`` with mask 1 = corrupted.

    Raises:
        ValueError: a ratio outside ``[0, 1)``, an unknown fill, ``"replace"`` with a batch of one.
    """
    fills = check_fills(fill)
    ratios = check_max_ratios(fills, max_ratio)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    n = images.shape[0]
    if "replace" in fills and n < 2:
        raise ValueError(
            f"fill 'replace' pastes pixels from another image of the batch, but the batch has {n} image; "
            "use a batch of at least 2 or the fills 'zeros' / 'noise'"
        )
    if not noise_std >= 0.0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    device = images.device
    rand_device = generator.device if generator is not None else device
    size = (images.shape[2], images.shape[3])
    corrupted = images
    union = torch.zeros(n, 1, *size, dtype=images.dtype, device=device)
    for f, ratio in zip(fills, ratios, strict=True):
        mask = gmml_mask(n, size, ratio, max_side, align, max_rects, device, generator).to(images.dtype)
        if f == "zeros":
            source = torch.zeros_like(images)
        elif f == "noise":
            noise = rng.randn(*images.shape, generator=generator, device=rand_device)
            source = (noise.to(device) * noise_std).to(images.dtype)
        else:  # replace: roll the clean batch by s in 1..N-1
            shift = torch.randint(1, n, (1,), generator=generator, device=rand_device).to(device)
            index = (torch.arange(n, device=device) + shift) % n  # [N], never i -> i
            source = images[index]
        corrupted = corrupted * (1 - mask) + source * mask
        union = torch.maximum(union, mask)
    return corrupted, union
