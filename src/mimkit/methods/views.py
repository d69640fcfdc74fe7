"""Two augmented views of a batch, made on its device with kornia by the method (SiT / BYOL / DINO style).

Each view: RandomResizedCrop (scale 0.2-1) back to the input size, horizontal flip, colour jitter
(p 0.8), grey-scale (p 0.2), Gaussian blur and solarisation. The views are asymmetric as in BYOL / DINO:
view 1 is always blurred and never solarised, view 2 is blurred with p 0.1 and solarised with p 0.2.

The batch arrives normalised (``(x - mean) / std`` per channel). The photometric steps work on
``[0, 1]`` pixels, so the batch is mapped back to ``[0, 1]`` first and normalised again afterwards: with
the dataset's ``mean`` / ``std`` when given (exact), otherwise with the batch's per-channel minimum and
maximum (an exact, invertible affine map that needs no statistics).

Channels: grey-scale conversion, saturation and hue need RGB, so they are used only when the images
have 3 channels; with any other count (1 for Fashion-MNIST) colour jitter changes brightness and
contrast only and grey-scale is skipped.

On a GPU the views are the one place in a training step that waits for the device: kornia (0.9) draws
each transform's random parameters on the host, copies them over and checks some of them there (six
places, found with ``torch.cuda.set_sync_debug_mode("error")``; tests/test_cuda.py holds every other
part of every method's step to none).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import kornia.augmentation as K
import torch
import torch.nn as nn

from mimkit.plain import pair

logger = logging.getLogger(__name__)


def _check_prob(p: float, name: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return p


def _non_persistent_buffers(module: nn.Module) -> nn.Module:
    """Keep kornia's internal buffers (solarise thresholds, ...) out of checkpoints."""
    for sub in module.modules():
        for name, buf in list(sub.named_buffers(recurse=False)):
            sub.register_buffer(name, buf, persistent=False)
    return module


def default_blur_kernel(size: tuple[int, int]) -> int:
    """An odd kernel side of about 10% of the shorter image side, at least 3 (23 for 224 px)."""
    k = max(3, int(0.1 * min(size)))
    return k if k % 2 else k + 1


class TwoViewAugment(nn.Module):
    """Two randomly augmented views of a normalised batch, on the batch's device.

    Args:
        size: ``(H, W)`` of the views (the model's input size).
        channels: image channels; the RGB-only steps are skipped unless 3, colour jitter and solarisation
            unless 1 or 3 (multi-band data keeps crops, flips and blur).
        mean, std: per-channel normalisation of the incoming batch (one value or one per channel);
            ``None`` maps each batch to ``[0, 1]`` with its per-channel min / max instead.
        crop_scale: RandomResizedCrop area range.
        flip_p: horizontal flip probability.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths (torchvision's convention).
        jitter_p: colour jitter probability.
        grayscale_p: grey-scale probability (RGB only).
        blur_p: blur probability for (view 1, view 2).
        blur_kernel: odd kernel side; ``None`` picks :func:`default_blur_kernel`.
        blur_sigma: blur sigma range in pixels.
        solarize_p: solarisation probability (threshold 0.5) for (view 1, view 2).
    """

    def __init__(
        self,
        size: tuple[int, int],
        channels: int,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: Sequence[float] | float = (1.0, 0.1),
        blur_kernel: int | None = None,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_p: Sequence[float] | float = (0.0, 0.2),
    ):
        super().__init__()
        size = (int(size[0]), int(size[1]))
        if channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
        lo, hi = crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale!r}")
        blur_kernel = default_blur_kernel(size) if blur_kernel is None else blur_kernel
        if blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be an odd positive int, got {blur_kernel!r}")
        blur_ps, solarize_ps = pair(blur_p, "blur_p", float), pair(solarize_p, "solarize_p", float)
        for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p), ("grayscale_p", grayscale_p)):
            _check_prob(p, name)
        for p in (*blur_ps, *solarize_ps):
            _check_prob(p, "blur_p / solarize_p")

        self.size = size
        self.channels = channels
        if mean is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
            std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
            if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels):
                raise ValueError(f"mean / std need 1 or {channels} values, got mean={mean!r}, std={std!r}")
            if not bool((std_t > 0).all()):
                raise ValueError(f"std must be positive, got {std!r}")
            self.register_buffer(
                "mean", mean_t.expand(channels).reshape(1, -1, 1, 1).clone(), persistent=False
            )
            self.register_buffer("std", std_t.expand(channels).reshape(1, -1, 1, 1).clone(), persistent=False)
        else:
            self.mean = None
            self.std = None

        rgb = channels == 3
        photometric = channels in (1, 3)  # jitter and solarisation are defined on grey / RGB pixels
        brightness, contrast, saturation, hue = jitter
        if not rgb and photometric:
            saturation, hue = 0.0, 0.0
            logger.info(
                "%d-channel images: two-view augmentation without grey-scale, saturation and hue", channels
            )
        elif not photometric:
            logger.info(
                "%d-band images: two-view augmentation without colour jitter, grey-scale and solarisation "
                "(made for grey / RGB pixels; crops, flips and blur kept)",
                channels,
            )

        def pipeline(view_blur_p: float, view_solarize_p: float) -> nn.Sequential:
            steps: list[nn.Module] = [
                K.RandomResizedCrop(size, scale=crop_scale),
                K.RandomHorizontalFlip(p=flip_p),
            ]
            if photometric:
                steps.append(K.ColorJitter(brightness, contrast, saturation, hue, p=jitter_p))
            if rgb:
                steps.append(K.RandomGrayscale(p=grayscale_p))
            steps.append(K.RandomGaussianBlur((blur_kernel, blur_kernel), blur_sigma, p=view_blur_p))
            if photometric:  # threshold 0.5
                steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=view_solarize_p))
            return nn.Sequential(*steps)

        self.view1 = _non_persistent_buffers(pipeline(blur_ps[0], solarize_ps[0]))
        self.view2 = _non_persistent_buffers(pipeline(blur_ps[1], solarize_ps[1]))

    def _to_unit(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Map a normalised batch to ``[0, 1]`` pixels: returns ``(x01, a, b)`` with ``images = x01 * a + b``
        per channel (``a``, ``b`` ``[1, C, 1, 1]``), the map back after augmenting."""
        if self.mean is not None:  # images = (x01 - mean) / std
            return images * self.std + self.mean, 1.0 / self.std, -self.mean / self.std
        lo = images.amin(dim=(0, 2, 3), keepdim=True)  # [1, C, 1, 1]
        hi = images.amax(dim=(0, 2, 3), keepdim=True)
        scale = (hi - lo).clamp_min(1e-6)
        return (images - lo) / scale, scale, lo

    def view(self, images: torch.Tensor, index: int = 0) -> torch.Tensor:
        """One augmented view (``index`` 0 or 1 picks the pipeline), ``[N, C, H, W]`` -> ``[N, C, *size]``.

        Runs in float32 with autocast off; the result is in the input's normalised space.
        """
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"images must be [N, {self.channels}, H, W], got shape {tuple(images.shape)}")
        if index not in (0, 1):
            raise ValueError(f"view index must be 0 or 1, got {index!r}")
        pipe = self.view1 if index == 0 else self.view2
        with torch.autocast(device_type=images.device.type, enabled=False):
            x01, a, b = self._to_unit(images.float())
            return pipe(x01) * a + b

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, C, H, W]`` (normalised) -> two views ``[N, C, *size]`` (normalised the same way)."""
        return self.view(images, 0), self.view(images, 1)
