"""Fine-tuning targets: label smoothing, and MixUp / CutMix of a batch with its soft targets.

MixUp / CutMix are written here (:class:`MixUpCutMix`, thirty lines) rather than taken from kornia:
kornia's ``RandomMixUpV2`` draws the mixing weight uniformly instead of from ``Beta(alpha, alpha)``, its
``RandomCutMixV2`` still defaults to an area-inconsistent weight, and both return ``(y_a, y_b, lam)``
triples that would have to be turned into smoothed soft targets anyway.
"""

from __future__ import annotations

import math

import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``[N]`` int -> ``[N, num_classes]``: ``1 - smoothing + smoothing / C`` on the label, ``smoothing / C``
    elsewhere (each row sums to 1)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


class MixUpCutMix:
    """MixUp (Zhang et al., 2018) or CutMix (Yun et al., 2019) of a batch with its reverse, with soft targets.

    One weight ``lam ~ Beta(alpha, alpha)`` per batch (timm's "batch" mode): MixUp blends the images,
    CutMix pastes a box of ``1 - lam`` of the area from the reversed batch, and ``lam`` is then corrected
    to the box's actual area after clipping. Targets: ``lam * t + (1 - lam) * t.flip(0)`` with ``t`` the
    smoothed one-hot labels. Random numbers come from the global CPU torch RNG (saved in checkpoints by
    the trainer) and stay on the host: no device sync per batch.

    Args:
        num_classes: classes of the targets.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 turns that mix off.
        prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix when both are on.
        smoothing: label smoothing of the targets.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        smoothing: float = 0.1,
    ):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.smoothing = smoothing

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @staticmethod
    def _beta(alpha: float) -> float:
        a = torch.tensor(float(alpha))
        return float(torch.distributions.Beta(a, a).sample())

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [N, C, H, W]``, ``labels [N]`` -> mixed images, soft targets ``[N, classes]``."""
        targets = smooth_one_hot(labels, self.num_classes, self.smoothing)
        if not self.active or float(torch.rand(())) >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or float(torch.rand(())) < self.switch_prob
        )
        if use_cutmix:
            lam = self._beta(self.cutmix_alpha)
            height, width = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(height * cut), int(width * cut)
            cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        else:
            lam = self._beta(self.mixup_alpha)
            images = images * lam + images.flip(0) * (1.0 - lam)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)
