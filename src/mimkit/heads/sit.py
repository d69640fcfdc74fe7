"""SiT's heads (Atito et al., 2021): a light pixel reconstruction head and a contrastive projection head."""

from __future__ import annotations

import torch
import torch.nn as nn


class SiTReconstructionHead(nn.Module):
    """Patch tokens -> pixels: an MLP on each token, then ``ConvTranspose2d(kernel = stride = patch)``.

    Args:
        embed_dim: encoder width ``D``.
        patch_size: ``p``; each token becomes a ``p x p`` block of pixels.
        grid_size: ``(gh, gw)`` patch grid of the encoder.
        out_chans: image channels ``C``.
        hidden_dim: MLP width (reference 2048).
        num_layers: ``Linear + GELU`` layers in the MLP (reference two or three), at least 1.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        grid_size: tuple[int, int],
        out_chans: int,
        hidden_dim: int = 2048,
        num_layers: int = 2,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers!r}")
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive int, got {hidden_dim!r}")
        self.grid_size = tuple(grid_size)
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(embed_dim if i == 0 else hidden_dim, hidden_dim), nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        self.to_pixels = nn.ConvTranspose2d(hidden_dim, out_chans, kernel_size=patch_size, stride=patch_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[N, L, D]`` (patch tokens only, row-major) -> ``[N, C, gh * p, gw * p]``."""
        n, length, _ = tokens.shape
        gh, gw = self.grid_size
        if length != gh * gw:
            raise ValueError(f"expected {gh * gw} patch tokens for a {gh}x{gw} grid, got {length}")
        x = self.mlp(tokens)  # [N, L, hidden]
        x = x.transpose(1, 2).reshape(n, -1, gh, gw)  # [N, hidden, gh, gw]
        return self.to_pixels(x)  # [N, C, H, W]


class ProjectionHead(nn.Module):
    """``(Linear - BatchNorm1d - GELU) x (num_layers - 1)`` then ``Linear`` to ``out_dim``.

    SiT's contrastive projection: reference widths 4096 hidden, 256 out, three Linear layers.

    Args:
        in_dim: input width (the encoder's ``D``).
        hidden_dim: width of the hidden layers.
        out_dim: embedding width.
        num_layers: Linear layers in total, at least 1.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers!r}")
        for name, value in (("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_dim] -> [N, out_dim]``."""
        return self.layers(x)
