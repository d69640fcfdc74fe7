"""Reconstruction grids: one row per image, one column per stage (original | masked | ...); drawn by
``mimkit reconstruct`` and, every few minutes, during pretraining (:class:`ReconstructionPictures`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from mimkit.data.transforms import denormalize

DEFAULT_STRETCH = (1.0, 99.0)  # percentiles shown as black / white for 16-bit and float data

# The columns a method's ``reconstruct`` may return, in the order they are shown, with their titles.
PANELS = (
    ("masked", "masked input"),
    ("corrupted", "corrupted input"),
    ("reconstruction", "reconstruction"),
    ("pasted", "reconstruction + visible"),
)


def display_bands(channels: int, bands: Sequence[int] | str | None) -> list[list[int]]:
    """The bands each picture row shows: one list per row, of 1 (grey) or 3 (an RGB composite) bands.

    ``None``: grey for 1 channel, RGB for 3 or 4 (alpha not shown), the first three bands otherwise (say
    ``bands`` to choose them); ``[i]`` or ``[r, g, b]``: those bands; ``"each"``: one grey row per band.
    """
    if bands == "each":
        return [[c] for c in range(channels)]
    if bands is None:
        return [[0]] if channels < 3 else [[0, 1, 2]]
    bands = list(bands)
    if len(bands) not in (1, 3) or not all(0 <= b < channels for b in bands):
        raise ValueError(f"--bands must be 1 or 3 band indices in 0-{channels - 1}, or 'each'; got {bands!r}")
    return [bands]


def stretch_range(pixels: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``low`` / ``high`` percentiles of ``pixels`` ``[N, C, H, W]``, as ``[C, 1, 1]`` tensors."""
    flat = pixels.transpose(0, 1).reshape(pixels.shape[1], -1).float()
    q = torch.quantile(flat, torch.tensor([low / 100, high / 100]), dim=1)  # [2, C]
    lo, hi = q[0].view(-1, 1, 1), q[1].view(-1, 1, 1)
    return lo, torch.maximum(hi, lo + 1e-6)


def save_reconstruction_grid(
    images: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    path: str | os.PathLike,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    title: str | None = None,
    bands: Sequence[int] | str | None = None,
    stretch: tuple[float, float] | None = None,
) -> Path:
    """Write a PNG grid: original then each panel of ``outputs`` present in :data:`PANELS`.

    Args:
        images: normalised inputs ``[N, C, H, W]``.
        outputs: from ``method.reconstruct(images)``: normalised ``[N, C, H, W]`` tensors.
        mean, std: the normalisation to undo (per channel, unit scale).
        bands: what a row shows (:func:`display_bands`): a grey band, a 3-band composite, or ``"each"``.
        stretch: ``(low, high)`` percentiles of the originals mapped to black and white, per band, the
            same for every column (16-bit and multi-band data); None shows unit values 0-1 as they are.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state touched

    columns = [("original", images)] + [(t, outputs[k]) for k, t in PANELS if k in outputs]
    rows = display_bands(images.shape[1], bands)
    pictures = [denormalize(b.detach().float().cpu(), mean, std, clamp=stretch is None) for _, b in columns]
    if stretch is not None:
        lo, hi = stretch_range(pictures[0], *stretch)
        pictures = [((p - lo) / (hi - lo)).clamp(0.0, 1.0) for p in pictures]
    n = images.shape[0]
    fig = Figure(figsize=(1.6 * len(columns), 1.6 * n * len(rows)))
    axes = fig.subplots(n * len(rows), len(columns), squeeze=False)
    for col, (name, _) in enumerate(columns):
        for i in range(n):
            for r, shown in enumerate(rows):
                ax = axes[i * len(rows) + r][col]
                img = pictures[col][i, shown].permute(1, 2, 0).numpy()
                if img.shape[2] == 1:
                    ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(img, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and r == 0:
                    ax.set_title(name, fontsize=8)
                if col == 0 and (len(rows) > 1 or bands is not None):
                    ax.set_ylabel("band " + "/".join(map(str, shown)), fontsize=7)
    return save_figure(fig, path, title)


def reconstruct(
    method: nn.Module, images: torch.Tensor, seed: int = 0, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``method.reconstruct(images)`` in eval mode, its random draws (masks, noise fills) from ``seed``; the
    caller's random generator is left as it was.

    Args:
        method: has ``reconstruct(images, mask=None) -> {panel: [N, C, H, W], "mask": [N, 1, H, W]}``
            (MAE, SimMIM, SiT).
        images: normalised ``[N, C, H, W]`` on the method's device.
        seed: the same seed draws the same masks.
        mask: ``[N, L]`` or ``[N, gh, gw]`` patches to hide (1) instead of a drawn mask.
    """
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        method.eval()
        return method.reconstruct(images) if mask is None else method.reconstruct(images, mask=mask)


def draw_reconstructions(
    method: nn.Module,
    images: torch.Tensor,
    path: str | os.PathLike,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    title: str | None = None,
    bands: Sequence[int] | str | None = None,
    stretch: tuple[float, float] | None = None,
    seed: int = 0,
) -> Path:
    """:func:`reconstruct` written as a grid by :func:`save_reconstruction_grid`.

    Args:
        method: has ``reconstruct(images) -> {panel: [N, C, H, W]}`` (MAE, SimMIM, SiT).
        images: normalised ``[N, C, H, W]`` on the method's device.
        seed: the same seed draws the same masks, so pictures of one run at different steps compare.
    """
    outputs = reconstruct(method, images, seed)
    return save_reconstruction_grid(
        images, outputs, path, mean, std, title=title, bands=bands, stretch=stretch
    )


class ReconstructionPictures:
    """The trainer's ``picture`` during pretraining: a grid of the method's reconstructions of a few
    training images at a step, written to ``run_dir/pictures/reconstruction_step{step:06d}.png``.

    Args:
        run_dir: the run directory.
        mean, std: the data's normalisation, to show the pixels as they were.
        title: the start of each picture's title (the step is added).
        stretch: percentiles shown as black and white (16-bit and float data), or None.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        title: str = "",
        stretch: tuple[float, float] | None = None,
    ):
        self.dir = Path(run_dir) / "pictures"
        self.mean, self.std, self.title, self.stretch = tuple(mean), tuple(std), title, stretch

    def __call__(self, method: nn.Module, images: torch.Tensor, step: int) -> Path:
        path = self.dir / f"reconstruction_step{step:06d}.png"
        title = f"{self.title}  step {step}".strip()
        return draw_reconstructions(method, images, path, self.mean, self.std, title, stretch=self.stretch)


def save_figure(fig, path: str | os.PathLike, title: str | None = None) -> Path:
    """A figure of panels written as a PNG at ``path`` (its folder made), under ``title`` if given."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
