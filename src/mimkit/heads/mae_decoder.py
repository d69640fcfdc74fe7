"""MAE's light transformer decoder: visible latents + mask tokens -> per-patch pixels."""

from __future__ import annotations

import torch
import torch.nn as nn

from mimkit.models.layers import Block, init_weights_mae
from mimkit.models.pos_embed import sincos_2d


class MAEDecoder(nn.Module):
    """Reference names map as ``decoder_embed -> embed``, ``mask_token -> mask_token``,
    ``decoder_pos_embed -> pos_embed``, ``decoder_blocks -> blocks``, ``decoder_norm -> norm``,
    ``decoder_pred -> pred`` (see :mod:`mimkit.weights`).

    Args:
        grid_size: ``(gh, gw)`` patch grid of the encoder.
        embed_dim: encoder width ``D``.
        decoder_dim, depth, num_heads: decoder size (reference: 512, 8, 16).
        patch_dim: ``p * p * C`` values predicted per patch.
    """

    def __init__(
        self,
        grid_size: tuple[int, int],
        embed_dim: int,
        patch_dim: int,
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        fused_attn: bool | str = "auto",
    ):
        super().__init__()
        for name, value, low in (("decoder_dim", decoder_dim, 1), ("decoder_depth", depth, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"MAE's {name} must be an integer >= {low}, got {value!r}")
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
            raise ValueError(f"MAE's decoder_heads must be a positive integer, got {num_heads!r}")
        if decoder_dim % 4 or decoder_dim % num_heads:
            raise ValueError(
                f"MAE's decoder_dim must be a multiple of 4 (its 2-D sin-cos position embedding) and of "
                f"decoder_heads={num_heads}, got {decoder_dim}"
            )
        self.grid_size = grid_size
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.pos_embed = nn.Parameter(
            sincos_2d(decoder_dim, grid_size, cls_token=True).unsqueeze(0), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            Block(decoder_dim, num_heads, mlp_ratio, fused_attn=fused_attn) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.pred = nn.Linear(decoder_dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_weights_mae)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``latent`` [N, 1 + K, D] (class token first), ``ids_restore`` [N, L] -> ``[N, L, p*p*C]``."""
        x = self.embed(latent)  # [N, 1 + K, Dd]
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(n, length - (x.shape[1] - 1), -1)
        x = torch.cat([x, mask_tokens], dim=1)  # [N, 1 + L, Dd]: class token, then the L tokens shuffled
        # Unshuffle with one row selection that keeps the class token in front (slot 0, patch i from
        # 1 + ids_restore[i]); index_select of whole rows is much cheaper on CPU than gather.
        index = torch.cat([ids_restore.new_zeros(n, 1), ids_restore + 1], dim=1)  # [N, 1 + L]
        index = index + torch.arange(n, device=index.device).unsqueeze(1) * (length + 1)  # rows of [N*(1+L)]
        x = x.flatten(0, 1).index_select(0, index.flatten()).view(n, length + 1, -1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]  # drop the class token
