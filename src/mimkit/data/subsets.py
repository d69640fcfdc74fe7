"""Subsets of a labeled dataset, drawn per class with a fixed seed: label fractions and held-out splits.

Used by fine-tuning on a fraction of the labels, by the linear probe's held-out split, by online kNN and
by the small-data benchmarks, so that every run (another method, another budget) sees exactly the same
images. ``label_subsets`` writes the drawn indices to a JSON file that later runs read back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mimkit.data.datasets import ImageDataset

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float in (0, 1], else a ValueError naming it."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(
            f"label fraction {fraction!r} is outside (0, 1]: give e.g. 0.01 for 1% of the labels"
        )
    return float(fraction)


def per_class_subset(
    labels: torch.Tensor,
    fraction: float | None,
    seed: int = 0,
    count: int | None = None,
    cap: int | None = None,
) -> torch.Tensor:
    """Indices of ``round(fraction * n_c)`` (at least 1, at most ``cap``) images of each class ``c``, drawn
    with ``seed``; or, with ``count`` instead of a fraction, of ``min(count, n_c)`` images of each class.

    Each class's images are put in a random order drawn from ``torch.Generator().manual_seed(seed)`` (one
    permutation per class, classes in increasing order) and the first ones are taken, so for one seed the
    subset of a smaller fraction is inside that of a larger one. The global RNG is not touched.

    Args:
        labels: int ``[N]``, every label >= 0.
        fraction: in (0, 1]; None when ``count`` is given.
        count: images per class (>= 1), instead of ``fraction``.

    Returns:
        int64 ``[M]`` sorted indices into ``labels``.
    """
    if (fraction is None) == (count is None):
        raise ValueError("per-class subsets take a fraction or a count per class, exactly one of them")
    if count is not None and count < 1:
        raise ValueError(f"images per class must be at least 1, got {count}")
    if cap is not None and cap < 1:
        raise ValueError(f"the cap on images per class must be at least 1, got {cap}")
    fraction = None if fraction is None else check_fraction(fraction)
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("per-class subsets need labeled data; some labels are -1 (unlabeled)")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        order = members[torch.randperm(members.numel(), generator=generator)]
        take = count if fraction is None else max(1, math.floor(fraction * members.numel() + 0.5))
        take = take if cap is None else min(take, cap)
        chosen.append(order[:take])
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(chosen).sort().values


def holdout_split(
    labels: torch.Tensor,
    fraction: float | None,
    seed: int = 0,
    count: int | None = None,
    cap: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit, holdout)`` sorted indices: ``fraction`` (at most ``cap``, or ``count`` images) of each class
    held out (to choose hyper-parameters): :func:`per_class_subset`'s draw."""
    held = per_class_subset(labels, fraction, seed, count, cap)
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[held] = False
    return torch.nonzero(keep).flatten(), held


def subset_dataset(dataset: ImageDataset, indices: torch.Tensor) -> ImageDataset:
    """The images ``indices`` of ``dataset`` as a new dataset (same classes, size and normalisation)."""
    idx = indices.long()
    images = dataset.images.index_select(0, idx) if dataset.images is not None else None
    files = [dataset.files[i] for i in idx.tolist()] if images is None else None
    return ImageDataset(
        dataset.labels.index_select(0, idx),
        dataset.classes,
        dataset.channels,
        dataset.img_size,
        dataset.mean,
        dataset.std,
        images=images,
        files=files,
        resize_mode=dataset.resize_mode,
        root=dataset.root,
        split=dataset.split,
        decode=dataset.decode,  # a lazy subset decodes its files as the whole set does (bands, 16 bits)
        clip=dataset.clip,
    )


def _labels_digest(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def label_subsets(
    labels: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    path: str | os.PathLike | None = None,
) -> dict[float, torch.Tensor]:
    """Per-class subsets for several fractions, written to (or read back from) a JSON file.

    If ``path`` exists and was written for the same labels and seed, its subsets are used as they are
    (runs stay comparable even if the drawing code changes); fractions it lacks are added to it.

    Returns:
        ``{fraction: sorted int64 indices}``.
    """
    fractions = [check_fraction(f) for f in fractions]
    stored: dict[str, Any] = {}
    digest = _labels_digest(labels)
    if path is not None and Path(path).is_file():
        stored = json.loads(Path(path).read_text())
        if stored.get("labels_sha256") != digest or stored.get("seed") != seed:
            raise ValueError(
                f"{path} holds label subsets drawn for other data or another seed "
                f"(seed {stored.get('seed')!r}, labels {stored.get('labels_sha256')!r}; now seed {seed}, "
                f"labels {digest}); use another output directory or delete it"
            )
    subsets_json = dict(stored.get("subsets", {}))
    out: dict[float, torch.Tensor] = {}
    for fraction in fractions:
        key = repr(fraction)
        if key not in subsets_json:
            subsets_json[key] = per_class_subset(labels, fraction, seed).tolist()
        out[fraction] = torch.tensor(subsets_json[key], dtype=torch.long)
    if path is not None and subsets_json != stored.get("subsets"):
        record = {
            "seed": seed,
            "num_images": int(labels.shape[0]),
            "labels_sha256": digest,
            "rule": "per class: the first round(fraction * n_c) (>= 1) of a seeded permutation (nested)",
            "counts": {k: len(v) for k, v in subsets_json.items()},
            "subsets": subsets_json,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record) + "\n")
    return out
