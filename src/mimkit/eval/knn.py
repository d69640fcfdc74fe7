"""Weighted k-nearest-neighbour classification of frozen features (as DINO, Caron et al., 2021).

Features are L2-normalised; the ``k`` most cosine-similar training features vote for their class with
weight ``exp(sim / T)``, ``T = 0.07``. Several ``k`` are scored from one top-k search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Predicted classes of ``test_features`` for each ``k``.

    Args:
        train_features: ``[M, D]`` the memory bank; ``train_labels`` ``[M]`` int.
        test_features: ``[Q, D]``.
        ks: neighbour counts, each in ``[1, M]``.

    Returns:
        ``{k: predictions [Q]}``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    bank = train_features.shape[0]
    bad = [k for k in ks if not 1 <= k <= bank]
    if bad:
        raise ValueError(f"k={bad[0]} is outside [1, {bank}]: the memory bank has {bank} training features")
    num_classes = num_classes or int(train_labels.max()) + 1
    train = F.normalize(train_features.float(), dim=1)
    k_max = max(ks)
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        sim, idx = (query @ train.T).topk(k_max, dim=1)  # [q, k_max], sorted descending
        votes = F.one_hot(train_labels[idx], num_classes).float() * (sim / temperature).exp().unsqueeze(-1)
        for k in ks:
            preds[k].append(votes[:, :k].sum(dim=1).argmax(dim=1))
    return {k: torch.cat(v) for k, v in preds.items()}


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
) -> dict[int, float]:
    """Top-1 accuracy (in %) of :func:`knn_classify` for each ``k``."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    preds = knn_classify(train_features, train_labels, test_features, ks, temperature, num_classes)
    return {k: 100.0 * (p == test_labels).float().mean().item() for k, p in preds.items()}
