"""Per-channel statistics of image tensors at their own bit depth: normalisation and percentile clipping.

uint8 and uint16 statistics are exact (from each channel's histogram of its possible values); float ones
come from float64 sums. Values are in unit scale (mean / std, as the transforms see them) or in stored units
(percentiles, clip bounds, as the dataset stores them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from mimkit.data.config import DataConfig
from mimkit.data.images import UNIT_MAX

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATS_SAMPLE = 2000  # folders: images sampled for the per-channel mean / std
_MIN_STD = 1e-6


def _histograms(images: torch.Tensor) -> torch.Tensor | None:
    """Per-channel value counts ``[C, 256 or 65536]`` (float64) of integer images; None for float ones."""
    if images.dtype not in (torch.uint8, torch.uint16):
        return None
    bins = 256 if images.dtype == torch.uint8 else 65536
    rows = []
    for c in range(images.shape[1]):
        values = images[:, c].reshape(-1)
        values = values.to(torch.int32) if images.dtype == torch.uint16 else values
        rows.append(torch.bincount(values, minlength=bins).to(torch.float64))
    return torch.stack(rows)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of images ``[N, C, H, W]``, in unit scale.

    uint8 / uint16: exact, from each channel's histogram of its possible values (integer counts);
    float32: float64 sums.
    """
    top = UNIT_MAX[images.dtype] if images.dtype in UNIT_MAX else 1.0
    counts = _histograms(images)
    means, stds = [], []
    for c in range(images.shape[1]):
        if counts is not None:
            values = torch.arange(counts.shape[1], dtype=torch.float64)
            total = counts[c].sum()
            mean = (counts[c] * values).sum() / total
            var = ((counts[c] * (values - mean).square()).sum() / total).clamp_min(0.0)
        else:
            x = images[:, c].to(torch.float64)
            mean, var = x.mean(), x.var(unbiased=False)
        means.append(float(mean) / top)
        stds.append(float(var.sqrt()) / top)
    return tuple(means), tuple(stds)


def channel_percentiles(
    images: torch.Tensor, low: float, high: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``low`` / ``high`` percentiles (0-100) of images ``[N, C, H, W]`` in stored units.

    Integer images: the smallest value whose cumulative count reaches the fraction (exact, from the
    histogram); float images: ``torch.quantile`` (linear) of up to 2^24 values per channel.
    """
    counts = _histograms(images)
    lows, highs = [], []
    for c in range(images.shape[1]):
        if counts is not None:
            cdf = counts[c].cumsum(0) / counts[c].sum()
            # low: the first value with more than low% below or at it; high: the first reaching high%
            lo = torch.searchsorted(cdf, torch.tensor([low / 100], dtype=torch.float64), right=True)
            hi = torch.searchsorted(cdf, torch.tensor([high / 100], dtype=torch.float64))
            pick = [int(lo.clamp_max(len(cdf) - 1)), int(hi.clamp_max(len(cdf) - 1))]
        else:
            x = images[:, c].reshape(-1).to(torch.float64)
            if x.numel() > 2**24:
                x = x[torch.linspace(0, x.numel() - 1, 2**24).long()]
            pick = [float(torch.quantile(x, p / 100)) for p in (low, high)]
        lows.append(float(pick[0]))
        highs.append(float(pick[1]))
    return tuple(lows), tuple(highs)


def apply_clip(images: torch.Tensor, clip: tuple[Sequence[float], Sequence[float]] | None) -> torch.Tensor:
    """Clip each channel of ``[..., C, H, W]`` images to ``clip = (lows, highs)`` (stored units)."""
    if clip is None:
        return images
    shape = (-1, 1, 1)
    wide = images.to(torch.int32) if images.dtype == torch.uint16 else images  # uint16 has no clamp kernel
    lo = torch.tensor(clip[0], dtype=torch.float64).view(shape)
    hi = torch.tensor(clip[1], dtype=torch.float64).view(shape)
    if wide.dtype.is_floating_point:
        out = torch.maximum(torch.minimum(wide, hi.to(wide.dtype)), lo.to(wide.dtype))
    else:
        out = torch.maximum(torch.minimum(wide, hi.round().to(wide.dtype)), lo.round().to(wide.dtype))
    return out.to(images.dtype)


def normalization(
    cfg: DataConfig, channels: int, dataset_stats: Callable[[], tuple[Sequence[float], Sequence[float]]]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) ``cfg.normalize`` asks for; ``dataset_stats`` is called only for "dataset"."""
    if cfg.normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    if cfg.normalize == "imagenet":
        if channels != 3:
            raise ValueError(
                f"data.normalize='imagenet' needs 3 channels, the data has {channels}; "
                "use 'dataset', 'none' or [[means], [stds]]"
            )
        return IMAGENET_MEAN, IMAGENET_STD
    if cfg.normalize == "dataset":
        mean, std = dataset_stats()
        if min(std) < _MIN_STD:
            logger.warning("a channel of the training images is constant (std %s); using std 1 for it", std)
            std = tuple(s if s >= _MIN_STD else 1.0 for s in std)
        return tuple(mean), tuple(std)
    means, stds = cfg.normalize
    if len(means) == 1:
        means, stds = list(means) * channels, list(stds) * channels
    if len(means) != channels:
        raise ValueError(
            f"data.normalize gives {len(means)} means / stds for {channels}-channel images; "
            f"give 1 or {channels}"
        )
    return tuple(float(m) for m in means), tuple(float(s) for s in stds)


def sample_indices(n: int, k: int = STATS_SAMPLE) -> list[int]:
    """A fixed sample of ``min(n, k)`` indices (the same on every machine and every call)."""
    if n <= k:
        return list(range(n))
    generator = torch.Generator().manual_seed(0)
    return sorted(torch.randperm(n, generator=generator)[:k].tolist())


def resolve_clip(cfg: DataConfig, channels: int, sample: Callable[[], torch.Tensor]):
    """``cfg.clip`` as per-channel ``(lows, highs)`` in stored units: given, or ``sample()``'s percentiles."""
    if cfg.clip is None:
        return None
    if all(isinstance(v, (list, tuple)) for v in cfg.clip):
        lows, highs = (list(v) * channels if len(v) == 1 else list(v) for v in cfg.clip)
        if len(lows) != channels:
            raise ValueError(f"data.clip gives {len(lows)} lows / highs for {channels}-channel images")
        return tuple(lows), tuple(highs)
    clip = channel_percentiles(sample(), *cfg.clip)
    logger.info("clipping to the %g-%g percentiles per channel: %s", *cfg.clip, clip)
    return clip
