"""Masks given by the caller instead of drawn: a user's clicks in ``mimkit explore``, a test's hand-made
mask. Each method's ``reconstruct(images, mask=...)`` takes one."""

from __future__ import annotations

import torch

from mimkit.masking.random_tokens import TokenMask


def check_token_mask(mask: torch.Tensor, batch_size: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """A caller's token mask ``[N, L]`` or ``[N, gh, gw]`` (1 = hidden) as a float ``[N, L]``.

    Raises:
        ValueError: another shape, or values other than 0 and 1.
    """
    gh, gw = grid_size
    n = batch_size
    if tuple(mask.shape) not in ((n, gh * gw), (n, gh, gw)):
        raise ValueError(
            f"mask must be [N, L] = {(n, gh * gw)} or [N, gh, gw] = {(n, gh, gw)}, got {tuple(mask.shape)}"
        )
    mask = mask.reshape(n, gh * gw).float()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask values must be 0 (visible) or 1 (hidden)")
    return mask


def token_mask_from(mask: torch.Tensor) -> TokenMask:
    """An explicit ``[N, L]`` mask (1 = removed) as MAE's ``TokenMask``: the kept tokens
    in patch order, then the removed ones.

    Raises:
        ValueError: rows that remove different numbers of tokens (the kept tokens form one ``[N, K]``
            tensor).
    """
    removed = mask.sum(dim=1)
    if bool((removed != removed[0]).any()):
        raise ValueError(
            f"every image must hide the same number of patches, got {sorted(set(removed.long().tolist()))}"
        )
    ids_shuffle = torch.argsort(mask, dim=1, stable=True)  # visible (0) first, each group in patch order
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = mask.shape[1] - int(removed[0])
    return TokenMask(ids_shuffle[:, :keep], ids_restore, mask)
