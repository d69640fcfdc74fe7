"""Batch transforms on the device: stored images (uint8, uint16 or float32) in, normalised float images out.

The pretraining crop is the reference one (torchvision's ``RandomResizedCrop`` as MAE and SimMIM use
it: up to 10 tries of a random area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``,
integer box, centre crop as the fallback; bicubic resampling; then a horizontal flip with p = 0.5),
drawn for the whole batch at once and applied as one batched ``grid_sample``: a single kernel, no
per-image Python loop and no read-back of the boxes to the host. That is written here rather than taken
from kornia because kornia's exact crop (``cropping_mode="slice"``) resizes image by image and reads the
boxes back to the host, and its batched one (``"resample"``) pads bicubic taps with zeros, which darkens
the crop's edges; ours replicates the border pixels like ``F.interpolate``. ``backend="kornia"`` keeps
kornia's version available for comparison. Randomness comes from :mod:`mimkit.rng`: per sample (keyed by seed,
epoch and sample index) inside the trainer, else the global torch RNG of the images' device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mimkit import rng
from mimkit.data.config import AUGMENT_PRESETS, DataConfig, check_range_pair
from mimkit.plain import pair

logger = logging.getLogger(__name__)

# preset -> (crop scale, crop aspect ratio); None = no random crop
PRESETS: dict[str, tuple[tuple[float, float], tuple[float, float]] | None] = {
    "mae": ((0.2, 1.0), (3 / 4, 4 / 3)),
    "simmim": ((0.67, 1.0), (3 / 4, 4 / 3)),
    "none": None,
}
BACKENDS = ("torch", "kornia")


def _stats_buffer(values: Sequence[float], name: str) -> torch.Tensor:
    if (
        not isinstance(values, (list, tuple))
        or not values
        or not all(isinstance(v, (int, float)) for v in values)
    ):
        raise ValueError(f"{name} must be a sequence of per-channel floats, got {values!r}")
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, -1, 1, 1)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Stored images -> float32 in unit scale: uint8 / 255, uint16 / 65535; float values are kept as they
    are (float data has no fixed range: its normalisation comes from the data)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.dtype == torch.uint16:
        return images.float().div_(65535.0)
    return images.float()


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images [N, C, H, W], got shape {tuple(images.shape)}")
    return to_unit_float(images)


def _check_channels(images: torch.Tensor, mean: torch.Tensor) -> None:
    if mean.shape[1] not in (1, images.shape[1]):
        raise ValueError(
            f"images have {images.shape[1]} channels but the normalisation has {mean.shape[1]} "
            "(mean / std per channel)"
        )


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of float [0, 1] images, antialiased when shrinking, clamped back into [0, 1]."""
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink).clamp_(0.0, 1.0)


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device | str | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Crop boxes as torchvision's ``RandomResizedCrop.get_params`` draws them, for ``n`` images at once.

    Per image: up to ``attempts`` tries of an area ``U(scale) * H * W`` and an aspect ratio
    ``exp(U(log ratio))``, rounded to whole pixels; the first box that fits is placed uniformly at random;
    if none fits, the largest centred box with the ratio clamped into ``ratio``.

    Returns:
        float ``[n, 4]``: ``(top, left, h, w)`` in pixels (whole numbers).
    """
    area = height * width
    # every draw is per sample (mimkit.rng): inside the trainer a sample's crop depends on its key only
    s = scale[0] + (scale[1] - scale[0]) * rng.rand(n, attempts, device=device)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    log_r = log_lo + (log_hi - log_lo) * rng.rand(n, attempts, device=device)
    aspect = log_r.exp()
    w = (area * s * aspect).sqrt().round()
    h = (area * s / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
    found = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # fallback: centre crop, aspect ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = rng.rand(n, 2, device=device)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), torch.full_like(h, (height - fh) // 2))
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), torch.full_like(w, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1)


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Crop ``boxes`` ``[N, 4]`` (top, left, h, w in pixels) out of float images ``[N, C, H, W]``, resize
    each crop to ``size`` (bicubic, border pixels replicated), mirror the rows where ``flip`` [N] is True.

    Equals ``F.interpolate(crop, size, mode="bicubic")`` of each crop, except that pixels next to the
    crop's edge are interpolated from the real neighbours outside the crop where the image has them.

    Returns:
        float ``[N, C, *size]`` (not clamped: bicubic can overshoot [0, 1]).
    """
    n, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(dim=1)
    # x_in = a * x_out + b in grid_sample's normalised coordinates (align_corners=False: -1 and 1 are the
    # outer edges of the border pixels), mapping the output's edges onto the crop's edges.
    a = w / width
    if flip is not None:
        a = torch.where(flip, -a, a)
    b = (2 * left + w) / width - 1
    c = h / height
    d = (2 * top + h) / height - 1
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([a, zero, b], 1), torch.stack([zero, c, d], 1)], 1)  # [N, 2, 3]
    grid = F.affine_grid(theta, [n, images.shape[1], *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)


class PretrainAugment(nn.Module):
    """The pretraining augmentation of a whole batch, on its device.

    ``uint8 [N, C, H, W]`` -> random resized crop (bicubic) to ``img_size`` -> horizontal flip (p = 0.5)
    -> ``(x / 255 - mean) / std``, float32 ``[N, C, *img_size]``. Move it to the images' device with
    ``.to(device)`` (its mean / std are buffers, not saved in state dicts).

    Args:
        img_size: output ``H = W`` or ``(H, W)``.
        mean, std: per-channel normalisation in [0, 1] pixel units (``dataset.mean`` / ``dataset.std``).
        preset: ``"mae"`` (scale 0.2-1), ``"simmim"`` (scale 0.67-1), both ratio 3/4-4/3 and flipped;
            ``"none"``: no crop and no flip, only a resize if the size differs, and the normalisation.
        crop_scale: overrides the preset's area range ``(a, b)``, ``0 < a <= b <= 1``.
        hflip: random horizontal flips (cropping presets only).
        ratio: overrides the preset's aspect-ratio range ``(a, b)``.
        backend: ``"torch"`` (batched, see the module docstring) or ``"kornia"``.
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        preset: str = "mae",
        crop_scale: Sequence[float] | None = None,
        hflip: bool = True,
        ratio: Sequence[float] | None = None,
        backend: str = "torch",
    ):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(
                f"augmentation preset must be one of {', '.join(AUGMENT_PRESETS)}; got {preset!r}"
            )
        if backend not in BACKENDS:
            raise ValueError(f"augmentation backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.img_size = pair(img_size, "img_size")
        self.register_buffer("mean", _stats_buffer(mean, "mean"), persistent=False)
        self.register_buffer("std", _stats_buffer(std, "std"), persistent=False)
        if self.mean.shape != self.std.shape or (self.std <= 0).any():
            raise ValueError(f"std must be > 0, one per mean; got mean {mean!r}, std {std!r}")
        self.preset = preset
        self.crop = PRESETS[preset] is not None
        default_scale, default_ratio = PRESETS[preset] or ((1.0, 1.0), (1.0, 1.0))
        self.scale = (
            check_range_pair(crop_scale, "crop_scale", 0.0, 1.0) if crop_scale is not None else default_scale
        )
        self.ratio = check_range_pair(ratio, "ratio", 0.0, math.inf) if ratio is not None else default_ratio
        self.hflip = bool(hflip) and self.crop
        self.backend = backend
        self._kornia = self._make_kornia() if backend == "kornia" and self.crop else None

    def _make_kornia(self) -> nn.Module:
        import kornia.augmentation as K

        layers = [K.RandomResizedCrop(self.img_size, scale=self.scale, ratio=self.ratio, resample="BICUBIC")]
        if self.hflip:
            layers.append(K.RandomHorizontalFlip(p=0.5))
        return nn.Sequential(*layers)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` -> normalised float32 ``[N, C, *img_size]``."""
        x = _to_unit_float(images)
        _check_channels(x, self.mean)
        if not self.crop:
            x = _resize(x, self.img_size)
        elif self._kornia is not None:
            x = self._kornia(x).clamp_(0.0, 1.0)
        else:
            n, _, height, width = x.shape
            boxes = random_resized_crop_boxes(n, height, width, self.scale, self.ratio, device=x.device)
            flip = rng.rand(n, device=x.device) < 0.5 if self.hflip else None
            x = crop_resize(x, boxes, self.img_size, flip).clamp_(0.0, 1.0)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        crop = (
            f"crop scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}"
            if self.crop
            else "no crop"
        )
        return (
            f"img_size={self.img_size}, preset={self.preset!r}, {crop}, hflip={self.hflip}, "
            f"backend={self.backend!r}"
        )


class EvalTransform(nn.Module):
    """uint8 ``[N, C, H, W]`` -> ``(x / 255 - mean) / std`` float32, resized (bicubic) if the size differs.

    Args:
        img_size: output ``H = W`` or ``(H, W)``; None keeps the input size.
        mean, std: per-channel normalisation in [0, 1] pixel units.
    """

    def __init__(self, img_size: int | Sequence[int] | None, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.img_size = None if img_size is None else pair(img_size, "img_size")
        self.register_buffer("mean", _stats_buffer(mean, "mean"), persistent=False)
        self.register_buffer("std", _stats_buffer(std, "std"), persistent=False)
        if self.mean.shape != self.std.shape or (self.std <= 0).any():
            raise ValueError(f"std must be > 0, one per mean; got mean {mean!r}, std {std!r}")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _to_unit_float(images)
        _check_channels(x, self.mean)
        if self.img_size is not None:
            x = _resize(x, self.img_size)
        return (x - self.mean) / self.std


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 1] float images ``[N, C, H, W]`` -> ``(x - mean) / std`` per channel."""
    x = _to_unit_float(images)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], clamp: bool = True
) -> torch.Tensor:
    """Undo the normalisation for pictures: ``[N, C, H, W]`` (or ``[C, H, W]``) -> ``x * std + mean``,
    clamped into [0, 1] unless ``clamp`` is False (float data, or a stretch to apply next)."""
    shape = (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    x = images * s + m
    return x.clamp(0.0, 1.0) if clamp else x


def build_augment(cfg: DataConfig, dataset) -> PretrainAugment:
    """The pretraining augmentation ``cfg`` asks for, at the size and normalisation of ``dataset``."""
    return PretrainAugment(
        dataset.img_size, dataset.mean, dataset.std, cfg.augment, cfg.crop_scale, cfg.hflip, cfg.crop_ratio
    )


def build_eval_transform(dataset, img_size: int | Sequence[int] | None = None) -> EvalTransform:
    """Normalisation only, with the statistics of ``dataset``, at its size unless ``img_size`` says."""
    return EvalTransform(img_size or dataset.img_size, dataset.mean, dataset.std)


# ----------------------------------------------------------------------------- augmentation

# kornia's default RandAugment candidates; "color" (saturation) needs RGB and is left out for other images.
_COLOR_OPS = ("color",)


class FinetuneAugment(nn.Module):
    """The fine-tuning augmentation of a whole batch, on its device.

    ``uint8 [N, C, H, W]`` -> RandomResizedCrop (bicubic, ``crop_scale``, ratio 3/4-4/3) + flip -> RandAugment
    (kornia; the ``n`` operations are drawn per batch, their magnitude sign per image) -> ``(x - mean) / std``
    -> random erasing (kornia; erased boxes are filled with 0, the mean, where timm fills with noise)
    -> float32 ``[N, C, *img_size]``.
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: Sequence[float] = (0.08, 1.0),
        hflip: bool = True,
        randaug_n: int = 2,
        randaug_m: int = 9,
        reprob: float = 0.25,
    ):
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment
        from kornia.augmentation.auto.rand_augment.rand_augment import default_policy

        self.img_size = pair(img_size, "img_size")
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.scale = check_range_pair(list(crop_scale), "crop_scale", 0.0, 1.0)
        self.ratio = (3 / 4, 4 / 3)
        self.hflip = hflip
        self.randaug = None
        channels = self.mean.shape[1]
        if randaug_n > 0 and channels not in (1, 3):
            logger.info("%d-channel images: fine-tuning without RandAugment (made for grey / RGB)", channels)
        elif randaug_n > 0:
            policy = [p for p in default_policy if channels == 3 or p[0][0] not in _COLOR_OPS]
            self.randaug = RandAugment(n=min(randaug_n, len(policy)), m=randaug_m, policy=policy)
        self.erase = K.RandomErasing(p=reprob, value=0.0) if reprob > 0 else None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(images)
        n, _, height, width = x.shape
        boxes = random_resized_crop_boxes(n, height, width, self.scale, self.ratio, device=x.device)
        flip = torch.rand(n, device=x.device) < 0.5 if self.hflip else None
        x = crop_resize(x, boxes, self.img_size, flip).clamp_(0.0, 1.0)
        if self.randaug is not None:
            x = self.randaug(x).clamp_(0.0, 1.0)
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x
