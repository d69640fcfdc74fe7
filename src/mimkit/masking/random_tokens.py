"""Per-sample random token masking (MAE, He et al., 2021)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from mimkit import rng


class TokenMask(NamedTuple):
    """``ids_keep`` [N, K]: kept tokens; ``ids_restore`` [N, L]: undoes the shuffle;
    ``mask`` [N, L]: 1 for removed tokens, 0 for kept, in the original patch order."""

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def check_ratio(mask_ratio: float, name: str = "mask_ratio") -> float:
    if not isinstance(mask_ratio, (int, float)) or not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {mask_ratio!r}")
    return float(mask_ratio)


def random_token_mask(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> TokenMask:
    """Keep ``int(L * (1 - mask_ratio))`` tokens per sample, those with the smallest noise.

    Args:
        batch_size, num_tokens: ``N`` and ``L``.
        mask_ratio: fraction of tokens removed, in (0, 1).
        noise: ``[N, L]`` to replace the uniform random draw (deterministic masks); lower noise = kept.
        device: where to draw the noise when none is given.
    """
    check_ratio(mask_ratio)
    if noise is None:
        noise = rng.rand(batch_size, num_tokens, device=device)  # per sample inside the trainer
    elif tuple(noise.shape) != (batch_size, num_tokens):
        raise ValueError(f"noise must have shape {(batch_size, num_tokens)}, got {tuple(noise.shape)}")
    len_keep = int(num_tokens * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(batch_size, num_tokens, device=noise.device)
    mask.scatter_(1, ids_keep, 0.0)
    return TokenMask(ids_keep, ids_restore, mask)
