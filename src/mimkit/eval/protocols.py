"""The evaluation protocols as plain typed functions: kNN, linear probe, fine-tuning, label efficiency, t-SNE.

Each takes the shared inputs as the small objects of :mod:`mimkit.eval.sources` (where the encoder comes
from, which data, how features are computed) plus its own options, and returns its results; the command
line (:mod:`mimkit.eval_cli`) only parses arguments into these objects and prints. The frozen protocols
share one cached feature pass per checkpoint, data, split, pooling and precision.

    from mimkit.eval.protocols import evaluate_knn
    from mimkit.eval.sources import DataChoice, EncoderChoice
    evaluate_knn(EncoderChoice("runs/mae"), DataChoice(test_limit=1000), ks=(20,))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn

from mimkit.data import DataConfig, ImageDataset, build_dataset
from mimkit.data.subsets import DEFAULT_FRACTIONS, check_fraction, label_subsets, subset_dataset
from mimkit.engine import dist
from mimkit.engine.config import _build, merge, parse_overrides, to_dict
from mimkit.engine.precision import auto_to_native
from mimkit.eval.cache import cached_features, feature_key
from mimkit.eval.classifier import build_classifier
from mimkit.eval.finetune import FinetuneConfig, finetune
from mimkit.eval.knn import knn_accuracy
from mimkit.eval.label_efficiency import run_label_efficiency, scratch_recipe
from mimkit.eval.linear import LinearProbeConfig, linear_probe
from mimkit.eval.sources import (
    DataChoice,
    EncoderChoice,
    FeatureOptions,
    cache_dir_for,
    encoders_to_evaluate,
    load_choice,
    load_splits,
    out_dir_for,
    require_labels,
)

T = TypeVar("T")
Entry = tuple[str, nn.Module, Path | None, dict[str, Any]]  # (row name, encoder, checkpoint, cache extras)


def load_recipe(cls: type[T], overrides: Sequence[str] = ()) -> T:
    """A recipe dataclass (:class:`LinearProbeConfig`, :class:`FinetuneConfig`) from its defaults and
    ``key.sub=value`` overrides (unknown keys are errors naming the key)."""
    return _build(cls, merge(to_dict(cls()), parse_overrides(list(overrides))), "")


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _features(
    entry: Entry,
    dataset: ImageDataset,
    data_cfg: DataConfig,
    split: str,
    options: FeatureOptions,
    cache: Path | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features ``[N, D]`` and labels ``[N]`` of one encoder on one split, from the cache if there."""
    _, encoder, checkpoint, extra = entry
    device = dist.setup(options.device).device  # under torchrun: the process group, this process's GPU
    precision = auto_to_native(options.precision, device)  # cached under what ran: bf16 and fp32 never mix
    key = feature_key(checkpoint, data_cfg, split, options.pool, {**extra, "precision": precision})
    return cached_features(encoder, dataset, key, cache, options.pool, options.batch_size, device, precision)


def _frozen_splits(
    encoder: EncoderChoice,
    data: DataChoice,
    options: FeatureOptions,
    compare_random: bool,
    protocol: str,
    check_bank: Callable[[int], None] = lambda n: None,
):
    """Yield ``(loaded, row name, (train features, labels), (test features, labels))`` for each encoder
    to score; ``check_bank(number of training images)`` runs before any feature is computed."""
    loaded = load_choice(encoder, data)
    train_set, test_set, train_cfg, test_cfg = load_splits(
        loaded.data, data.train_limit, data.test_limit, protocol
    )
    check_bank(len(train_set))
    cache = cache_dir_for(loaded, options.cache_dir, options.use_cache)
    for entry in encoders_to_evaluate(loaded, compare_random, encoder.seed):
        train = _features(entry, train_set, train_cfg, "train", options, cache)
        test = _features(entry, test_set, test_cfg, "test", options, cache)
        yield loaded, entry[0], train, test


def evaluate_knn(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    features: FeatureOptions | None = None,
    ks: Sequence[int] = (10, 20, 100, 200),
    compare_random: bool = False,
) -> dict[str, dict[int, float]]:
    """Weighted kNN top-1 (%) for every ``k`` from one feature pass.

    Returns:
        ``{"pretrained": {k: %}, "random init": {k: %}}`` (each when asked for / available).
    """
    data = data or DataChoice()
    features = features or FeatureOptions()

    def check_bank(size: int) -> None:
        bad = [k for k in ks if not 1 <= k <= size]
        if bad:
            raise ValueError(f"k={bad[0]} is outside [1, {size}]: the memory bank has {size} training images")

    results = {}
    for _, name, (train_f, train_y), (test_f, test_y) in _frozen_splits(
        encoder, data, features, compare_random, "kNN", check_bank
    ):
        results[name] = knn_accuracy(train_f, train_y, test_f, test_y, ks=tuple(ks))
    return results


def evaluate_linear(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    features: FeatureOptions | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    compare_random: bool = False,
) -> dict[str, dict[str, Any]]:
    """Linear probe (BatchNorm + Linear, LARS, blr chosen on held-out training features).

    ``overrides`` are ``key=value`` settings of :class:`~mimkit.eval.linear.LinearProbeConfig`
    (``epochs=90``, ``"blrs=[0.1, 1.0]"``, ...). Runs live in ``out_dir/<encoder>_<pool>``.

    Returns:
        ``{"pretrained": result, "random init": result}`` with the results of :func:`linear_probe`.
    """
    data = data or DataChoice()
    features = features or FeatureOptions()
    cfg = load_recipe(LinearProbeConfig, [f"device={features.device}", *overrides])
    results = {}
    for loaded, name, (train_f, train_y), (test_f, test_y) in _frozen_splits(
        encoder, data, features, compare_random, "the linear probe"
    ):
        out = out_dir_for(loaded, out_dir, "linear") / f"{_slug(name)}_{features.pool}"
        results[name] = linear_probe(train_f, train_y, test_f, test_y, out, cfg)
    return results


def evaluate_finetune(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    train_blocks: int | None = None,
    label_fraction: float = 1.0,
    random_init: bool = False,
) -> dict[str, Any]:
    """Fine-tune (full, or partial with ``train_blocks``) on ``label_fraction`` of the labels.

    ``overrides`` are ``key=value`` settings of :class:`~mimkit.eval.finetune.FinetuneConfig`
    (``train.epochs=50``, ``layer_decay=0.65``, ``mixup=0``, ...). The run lives in ``out_dir`` and resumes.
    ``random_init`` trains from scratch with :func:`~mimkit.eval.label_efficiency.scratch_recipe` (no
    layer-wise lr decay) unless ``overrides`` set ``layer_decay``.

    Returns:
        The result of :func:`~mimkit.eval.finetune.finetune` plus ``init`` and ``label_fraction``.
    """
    data = data or DataChoice()
    check_fraction(label_fraction)
    cfg = load_recipe(FinetuneConfig, overrides)
    if random_init and "layer_decay" not in parse_overrides(list(overrides)):
        cfg = scratch_recipe(cfg)  # no layer-wise decay from scratch, unless asked for
    if train_blocks is not None:
        cfg = dataclasses.replace(cfg, train_blocks=train_blocks)
    if encoder.teacher and random_init:
        raise ValueError("--teacher and --random-init exclude each other: one encoder is fine-tuned")
    loaded = load_choice(encoder, data)
    if loaded.encoder is None and not random_init:
        raise ValueError("fine-tuning needs a checkpoint to start from, or --random-init for the baseline")
    train_set, test_set, _, _ = load_splits(loaded.data, data.train_limit, data.test_limit, "fine-tuning")
    init = "random init" if random_init else loaded.label
    out = out_dir_for(loaded, out_dir, "finetune")
    if label_fraction < 1:
        subsets = label_subsets(train_set.labels, [label_fraction], encoder.seed, out / "label_subsets.json")
        train_set = subset_dataset(train_set, subsets[label_fraction])
    start = None if random_init else loaded.encoder
    classifier = build_classifier(loaded.encoder_cfg, train_set.num_classes, start, cfg, seed=encoder.seed)
    config = {
        "encoder": dict(loaded.encoder_cfg, init=init),
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "label_fraction": label_fraction,
    }
    result = finetune(classifier, train_set, test_set, cfg, out, config=config)
    return {**result, "init": init, "label_fraction": label_fraction}


def evaluate_label_efficiency(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    epochs: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    include_random: bool = True,
) -> list[dict[str, Any]]:
    """Fine-tune ``{pretrained, random init} x fractions``; writes a table, a CSV and a plot in ``out_dir``.

    Args:
        epochs: one per fraction (default: the recipe's ``train.epochs`` for all).
    """
    data = data or DataChoice()
    fractions = [check_fraction(f) for f in fractions]
    if epochs is not None and len(epochs) != len(fractions):
        raise ValueError(
            f"give one epoch count per fraction: {len(fractions)} fractions, {len(epochs)} epochs"
        )
    cfg = load_recipe(FinetuneConfig, overrides)
    loaded = load_choice(encoder, data)
    train_set, test_set, _, _ = load_splits(
        loaded.data, data.train_limit, data.test_limit, "label efficiency"
    )
    by_fraction = dict(zip(fractions, epochs, strict=True)) if epochs is not None else None
    return run_label_efficiency(
        loaded.encoder_cfg,
        loaded.encoder,
        train_set,
        test_set,
        out_dir_for(loaded, out_dir, "label_efficiency"),
        fractions,
        cfg,
        by_fraction,
        encoder.seed,
        include_random or loaded.encoder is None,
        {"checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None},
        pretrained_label=loaded.label,
    )


def evaluate_tsne(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    features: FeatureOptions | None = None,
    out: str | None = None,
    max_points: int | None = 2000,
    perplexity: float = 30.0,
    max_iter: int = 1000,
    random_init: bool = False,
) -> Path:
    """PNG of the t-SNE of test-set features coloured by class (needs scikit-learn)."""
    data = data or DataChoice()
    features = features or FeatureOptions()
    loaded = load_choice(encoder, data)
    test_cfg = dataclasses.replace(loaded.data, limit=data.test_limit)
    test_set = build_dataset(test_cfg, "test")
    require_labels(test_set, "the t-SNE plot")
    entries = list(encoders_to_evaluate(loaded, random_init, encoder.seed))
    entry = entries[-1] if random_init else entries[0]
    cache = cache_dir_for(loaded, features.cache_dir, features.use_cache)
    feats, labels = _features(entry, test_set, test_cfg, "test", features, cache)
    from mimkit.eval.tsne import save_tsne

    name = entry[0]
    path = (
        Path(out)
        if out is not None
        else out_dir_for(loaded, None, "tsne") / f"tsne_{_slug(name)}_{features.pool}.png"
    )
    title = (
        f"{loaded.encoder_cfg['name']} ({name}, {features.pool} features), t-SNE of {len(feats)} test images"
    )
    return save_tsne(
        feats, labels, path, test_set.classes, max_points, perplexity, encoder.seed, title, max_iter
    )
