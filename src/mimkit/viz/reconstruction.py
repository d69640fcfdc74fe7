"""Reconstruction grids: one row per image, one column per stage (original | masked | ...)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mimkit.data.transforms import denormalize

# The columns a method's ``reconstruct`` may return, in the order they are shown, with their titles.
PANELS = (
    ("masked", "masked input"),
    ("corrupted", "corrupted input"),
    ("reconstruction", "reconstruction"),
    ("pasted", "reconstruction + visible"),
)


def save_reconstruction_grid(
    images: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    path: str | os.PathLike,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    title: str | None = None,
) -> Path:
    """Write a PNG grid: original then each panel of ``outputs`` present in :data:`PANELS`.

    Args:
        images: normalised inputs ``[N, C, H, W]``.
        outputs: from ``method.reconstruct(images)``: normalised ``[N, C, H, W]`` tensors.
        mean, std: the normalisation to undo (per channel, pixel units in [0, 1]).
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state touched

    columns = [("original", images)] + [(t, outputs[k]) for k, t in PANELS if k in outputs]
    n = images.shape[0]
    fig = Figure(figsize=(1.6 * len(columns), 1.6 * n))
    axes = fig.subplots(n, len(columns), squeeze=False)
    for col, (name, batch) in enumerate(columns):
        pixels = denormalize(batch.detach().float().cpu(), mean, std)
        for row in range(n):
            ax = axes[row][col]
            img = pixels[row].permute(1, 2, 0).numpy()
            if img.shape[2] == 1:
                ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img[:, :, :3], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
