"""SimMIM's one-layer prediction head: a 1x1 convolution and a pixel shuffle (Xie et al., 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn


class PixelShuffleHead(nn.Sequential):
    """Feature map ``[N, D, h, w]`` -> pixels ``[N, C, h * s, w * s]``.

    ``Conv2d(D, s * s * C, 1)`` predicts the ``s x s x C`` pixels under each feature-map position and
    ``PixelShuffle(s)`` puts them in place: output channel ``c`` at ``(i * s + a, j * s + b)`` is conv
    channel ``c * s * s + a * s + b`` at ``(i, j)``. A ``Sequential`` so the weights are saved as
    ``0.weight`` / ``0.bias``, the reference's ``decoder.0.*`` names.

    Args:
        in_dim: ``D``, the encoder's output width.
        out_chans: ``C``, the image channels.
        stride: ``s``, the encoder's total downsampling (patch size for a ViT, 32 for Swin).
    """

    def __init__(self, in_dim: int, out_chans: int, stride: int):
        for name, value in (("in_dim", in_dim), ("out_chans", out_chans), ("stride", stride)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        super().__init__(
            nn.Conv2d(in_dim, stride * stride * out_chans, kernel_size=1), nn.PixelShuffle(stride)
        )
        self.stride = stride
        self.out_chans = out_chans

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D, h, w] -> [N, C, h * stride, w * stride]``."""
        return super().forward(features)
