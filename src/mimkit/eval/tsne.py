"""Embedding plot: t-SNE (scikit-learn) of frozen test-set features, one colour per class, as a PNG.

scikit-learn is an optional dependency (``pip install scikit-learn``); it is imported only here, when a
plot is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mimkit.data.subsets import per_class_subset


def tsne_embedding(
    features: torch.Tensor, perplexity: float = 30.0, seed: int = 0, pca_dims: int = 50, max_iter: int = 1000
) -> torch.Tensor:
    """2-D t-SNE of L2-normalised ``features [N, D]`` (PCA to ``pca_dims`` first when D is larger).

    Returns:
        float ``[N, 2]``.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
    except ImportError:
        raise ImportError(
            "the t-SNE plot needs scikit-learn, an optional dependency of mimkit: pip install scikit-learn"
        ) from None
    n = features.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    x = F.normalize(features.float(), dim=1).numpy()
    if x.shape[1] > pca_dims and n > pca_dims:
        x = PCA(n_components=pca_dims, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (n - 1) / 3)  # scikit-learn needs perplexity < n
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter)
    return torch.from_numpy(tsne.fit_transform(x)).float()


@dataclass(frozen=True)
class TsneOptions:
    """The t-SNE plot's settings.

    Attributes:
        max_points: plot a per-class sample of about this many points (None: all of them).
        perplexity, seed: t-SNE settings (the seed also draws the sample).
        max_iter: t-SNE optimisation steps (scikit-learn's minimum is 250).
    """

    max_points: int | None = 2000
    perplexity: float = 30.0
    seed: int = 0
    max_iter: int = 1000


def save_tsne(
    features: torch.Tensor,
    labels: torch.Tensor,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    options: TsneOptions | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG scatter of the t-SNE of ``features [N, D]``, coloured by ``labels [N]``.

    Args:
        class_names: legend names, index = label (default: the label numbers).
        options: sample size and t-SNE settings (:class:`TsneOptions`).
        title: figure title.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: unlabeled features (labels -1).
    """
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("the t-SNE plot colours points by class and needs labeled features; labels are -1")
    o = options or TsneOptions()
    if o.max_points is not None and features.shape[0] > o.max_points:
        keep = per_class_subset(labels, o.max_points / features.shape[0], o.seed)
        features, labels = features[keep], labels[keep]
    points = tsne_embedding(features, o.perplexity, o.seed, max_iter=o.max_iter).numpy()

    from matplotlib import colormaps
    from matplotlib.figure import Figure

    classes = sorted(torch.unique(labels).tolist())
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    for i, c in enumerate(classes):
        mask = (labels == c).numpy()
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        ax.scatter(points[mask, 0], points[mask, 1], s=4, color=cmap(i % cmap.N), label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
