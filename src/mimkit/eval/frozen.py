"""Frozen evaluation of encoder modules: kNN, the linear probe and t-SNE on one feature pass.

The entry takes modules and datasets, as DINOv2's evaluators take a model; where they come from (a run
directory, a checkpoint, an encoder file, a random init) is resolved above, in :mod:`mimkit.eval_sources`.

    enc = Encoder("pretrained", model.encoder)
    run = FeaturePass(torch.device("cpu"), "fp32")
    evaluate_frozen(enc, Split(train_set), Split(test_set), run, pools=("avg",), ks=(20,))
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.data import DataConfig, ImageDataset
from mimkit.eval.cache import cached_pooled_features, feature_key
from mimkit.eval.evaluation_record import data_fingerprint, write_evaluation
from mimkit.eval.features import FeaturePass
from mimkit.eval.knn import knn_accuracy
from mimkit.eval.linear import LinearProbeConfig, linear_probe
from mimkit.eval.records import chance_level
from mimkit.eval.tsne import TsneOptions, save_tsne


@dataclass(frozen=True)
class Encoder:
    """An encoder to evaluate, and what names its features in the cache.

    Attributes:
        name: its rows' name in the results (``"pretrained"``, ``"random init"``, ...).
        module: has ``forward_features(x) -> [N, T, D]`` and ``pool(tokens, pool) -> [N, D]``.
        checkpoint: the file it was loaded from (its bytes name its features), or None.
        key: what else names its features (encoder config, the seed of a random init, ...); None: its
            features are never cached.
    """

    name: str
    module: nn.Module
    checkpoint: Path | None = None
    key: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Split:
    """A dataset split and the data config it was built from (names its images in the cache; None: the
    features of this split are never cached)."""

    dataset: ImageDataset
    data: DataConfig | None = None


def slug(name: str) -> str:
    """A row name as a file name: ``"random init"`` -> ``random_init``, ``"mimkit MAE"`` -> ``mimkit_mae``."""
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def features(
    encoder: Encoder, split: Split, run: FeaturePass, pools: Sequence[str] = ("token",)
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Features of every image of ``split`` under each pooling, from one pass (or from the cache).

    Returns:
        ``{pool: (features [N, D] float32, not normalised, labels [N] int64)}``.
    """
    keys = {pool: cache_key(encoder, split, pool, run) for pool in pools}
    return cached_pooled_features(encoder.module, split.dataset, keys, run)


def cache_key(encoder: Encoder, split: Split, pool: str, run: FeaturePass) -> str | None:
    """What names ``encoder``'s ``pool`` features of ``split`` in ``run``'s precision; None: never cached."""
    if encoder.key is None or split.data is None:
        return None
    extra = {**encoder.key, "precision": run.precision}  # bf16 and fp32 features never mix
    return feature_key(encoder.checkpoint, split.data, split.dataset.split, pool, extra)


def evaluate_frozen(
    encoder: Encoder,
    train: Split,
    test: Split,
    run: FeaturePass,
    *,
    pools: Sequence[str] = ("token",),
    ks: Sequence[int] = (),
    linear: LinearProbeConfig | None = None,
    linear_dir: str | Path = "linear",
    knn_dir: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """kNN for every ``k`` and the linear probe for every pooling, from one feature pass per split.

    Each score is recorded for later comparison (:mod:`mimkit.eval.evaluation_record`): the probe's in
    ``<linear_dir>/<slug(encoder.name)>_<pool>/evaluation.json``, kNN's likewise under ``knn_dir``.

    Args:
        pools: poolings, each scored on its own (``"token"``, ``"avg"``, or what the module knows).
        ks: kNN neighbour counts, each in ``[1, training images]`` (none: no kNN).
        linear: the linear-probe recipe (None: no probe).
        linear_dir: where the probe's runs live, ``<linear_dir>/<slug(encoder.name)>_<pool>``.
        knn_dir: where the kNN records go (None: not recorded).

    Returns:
        ``{pool: {"knn": {k: top-1 %} or None, "linear": linear_probe's result or None, "chance",
        "seconds_features", "seconds_knn", "seconds_linear"}}`` (the feature time is shared by the pools;
        ``chance``: the test set's :func:`~mimkit.eval.records.chance_level`).

    Raises:
        ValueError: a ``k`` outside the memory bank, checked before any feature is computed.
    """
    size = len(train.dataset)
    bad = [k for k in ks if not 1 <= k <= size]
    if bad:
        raise ValueError(f"k={bad[0]} is outside [1, {size}]: the memory bank has {size} training images")
    t = time.perf_counter()
    (train_f, test_f) = (features(encoder, split, run, pools) for split in (train, test))
    t_features = time.perf_counter() - t
    recorded = run.rank == 0 and (linear is not None or (ks and knn_dir is not None))  # one process writes
    record = (
        dict(encoder=encoder.name, data=data_fingerprint(train.dataset, test.dataset)) if recorded else None
    )
    results = {}
    for pool in pools:
        (train_x, train_y), (test_x, test_y) = train_f[pool], test_f[pool]
        t = time.perf_counter()
        knn = knn_accuracy(train_x, train_y, test_x, test_y, ks=tuple(ks)) if ks else None
        t_knn = time.perf_counter() - t
        out = Path(linear_dir, f"{slug(encoder.name)}_{pool}")
        probe = linear_probe(train_x, train_y, test_x, test_y, out, linear) if linear is not None else None
        if record is not None and knn is not None and knn_dir is not None:
            scores = {f"k={k}": acc for k, acc in knn.items()}
            where = Path(knn_dir, f"{slug(encoder.name)}_{pool}")
            settings = {"precision": run.precision}
            write_evaluation(
                where, protocol="knn", variant={"pool": pool}, settings=settings, scores=scores, **record
            )
        if record is not None and probe is not None:
            settings = {**asdict(linear), "precision": run.precision}
            scores = {"top1": probe["test_top1"]}
            write_evaluation(
                out, protocol="linear", variant={"pool": pool}, settings=settings, scores=scores, **record
            )
        results[pool] = {
            "knn": knn,
            "linear": probe,
            "chance": chance_level(test_y),
            "seconds_features": t_features,
            "seconds_knn": t_knn,
            "seconds_linear": time.perf_counter() - t - t_knn,
        }
    return results


def plot_tsne(
    encoder: Encoder,
    test: Split,
    run: FeaturePass,
    path: str | Path,
    *,
    pool: str = "token",
    options: TsneOptions | None = None,
    title: str | None = None,
) -> Path:
    """PNG of the t-SNE of the ``pool`` features of ``test``, coloured by class (needs scikit-learn)."""
    feats, labels = features(encoder, test, run, (pool,))[pool]
    return save_tsne(feats, labels, path, test.dataset.classes, options, title)
