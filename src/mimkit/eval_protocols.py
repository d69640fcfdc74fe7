"""The evaluation protocols from paths: kNN, linear probe, fine-tuning, label efficiency, t-SNE, embeddings,
and a fine-tuned classifier's predictions.

Each resolves its inputs into modules and datasets (:mod:`mimkit.eval_sources`) and hands them to
:mod:`mimkit.eval`, which does the work; the command line (:mod:`mimkit.eval_cli`) only parses and prints.

    from mimkit.eval_protocols import evaluate_knn
    from mimkit.eval_sources import DataChoice, EncoderChoice
    evaluate_knn(EncoderChoice("runs/mae"), DataChoice(test_limit=1000), ks=(20,))
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mimkit.data import build_dataset
from mimkit.data.subsets import DEFAULT_FRACTIONS, check_fraction, label_subsets, subset_dataset
from mimkit.engine.config import parse_overrides
from mimkit.engine.dist import is_main_process, resolve_device
from mimkit.eval.classifier import build_classifier
from mimkit.eval.embed import write_embeddings
from mimkit.eval.finetune import finetune
from mimkit.eval.frozen import Split, evaluate_frozen, plot_tsne, slug
from mimkit.eval.label_efficiency import LabelEfficiencyOptions, run_label_efficiency, scratch_recipe
from mimkit.eval.linear import LinearProbeConfig
from mimkit.eval.planner import EncoderShape, choose_finetune, write_plan
from mimkit.eval.predict import check_topk, csv_path, folder_dataset, write_predictions
from mimkit.eval.recipe import FinetuneConfig, load_recipe
from mimkit.eval.saved import load_classifier
from mimkit.eval.tsne import TsneOptions
from mimkit.eval_sources import (
    DataChoice,
    EncoderChoice,
    FeatureOptions,
    cache_dir_for,
    encoders,
    load_encoder,
    load_splits,
    out_dir_for,
    require_labels,
    settle,
)

log = logging.getLogger(__name__)

# kNN's k by default (DINO's 10 and 20, and 100 / 200 for the large banks of ImageNet-size sets); those a
# small memory bank cannot hold are left out, said in one line
DEFAULT_KS = (10, 20, 100, 200)


def default_ks(bank: int) -> list[int]:
    """``DEFAULT_KS`` that a memory bank of ``bank`` training images holds (at least ``[bank]``)."""
    kept = [k for k in DEFAULT_KS if k <= bank] or [bank]
    dropped = [k for k in DEFAULT_KS if k > bank]
    if dropped:
        log.info(
            "kNN with k=%s; k=%s left out: the memory bank has %d training images (--k sets k)",
            ", ".join(map(str, kept)), ", ".join(map(str, dropped)), bank,
        )  # fmt: skip
    return kept


def _frozen(
    encoder: EncoderChoice,
    data: DataChoice | None,
    features: FeatureOptions | None,
    compare_random: bool,
    protocol: str,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """``{name: evaluate_frozen(...)[pool]}`` of the loaded encoder (and its random init if asked for)."""
    data, features = data or DataChoice(), features or FeatureOptions()
    loaded = load_encoder(encoder, data)
    train, test = load_splits(loaded.data, data.train_limit, data.test_limit, protocol)
    if "ks" in options and options["ks"] is None:
        options["ks"] = default_ks(len(train.dataset))
    run = settle(features, cache_dir_for(loaded, features))
    options.setdefault("linear_dir", out_dir_for(loaded, options.pop("out_dir", None), "linear"))
    if loaded.run_dir is not None:  # kNN scores are recorded in the run, for mimkit compare
        options.setdefault("knn_dir", out_dir_for(loaded, None, "knn"))
    return {
        e.name: evaluate_frozen(e, train, test, run, pools=(features.pool,), **options)[features.pool]
        for e in encoders(loaded, compare_random, encoder.seed)
    }


def evaluate_knn(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    features: FeatureOptions | None = None,
    *,
    ks: Sequence[int] | None = None,
    compare_random: bool = False,
) -> dict[str, dict[str, Any]]:
    """Weighted kNN top-1 (%) for every ``k`` from one feature pass (``ks`` None: :func:`default_ks`).

    Returns:
        ``{"pretrained": {"knn": {k: %}, "chance": ...}, "random init": ...}`` (each when asked for /
        available; ``chance``: the test set's :func:`~mimkit.eval.records.chance_level`).
    """
    results = _frozen(encoder, data, features, compare_random, "kNN", ks=ks)
    return {name: {"knn": r["knn"], "chance": r["chance"]} for name, r in results.items()}


def evaluate_linear(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    features: FeatureOptions | None = None,
    *,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    compare_random: bool = False,
) -> dict[str, dict[str, Any]]:
    """Linear probe (BatchNorm + Linear, LARS, blr chosen on held-out training features).

    ``overrides`` are ``key=value`` settings of :class:`~mimkit.eval.linear.LinearProbeConfig`
    (``epochs=90``, ``"blrs=[0.1, 1.0]"``, ...). Runs live in ``out_dir/<encoder>_<pool>``.

    Returns:
        ``{"pretrained": result, "random init": result}`` with the results of
        :func:`~mimkit.eval.linear.linear_probe`.
    """
    cfg = load_recipe(LinearProbeConfig, [f"device={(features or FeatureOptions()).device}", *overrides])
    results = _frozen(
        encoder, data, features, compare_random, "the linear probe", linear=cfg, out_dir=out_dir
    )
    return {name: r["linear"] for name, r in results.items()}


def evaluate_tsne(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    features: FeatureOptions | None = None,
    *,
    out: str | None = None,
    options: TsneOptions | None = None,
    random_init: bool = False,
) -> Path:
    """PNG of the t-SNE of test-set features coloured by class (needs scikit-learn)."""
    data, features = data or DataChoice(), features or FeatureOptions()
    loaded = load_encoder(encoder, data)
    test_cfg = dataclasses.replace(loaded.data, limit=data.test_limit)
    test_set = build_dataset(test_cfg, "test")
    require_labels(test_set, "the t-SNE plot")
    entry = encoders(loaded, random_init, encoder.seed)[-1 if random_init else 0]
    run = settle(features, cache_dir_for(loaded, features))
    pool = features.pool
    name = f"tsne_{slug(entry.name)}_{pool}.png"
    path = Path(out) if out is not None else out_dir_for(loaded, None, "tsne") / name
    what = f"{entry.name}, {pool} features"
    title = f"{loaded.encoder_cfg['name']} ({what}), t-SNE of {len(test_set)} test images"
    options = options or TsneOptions(seed=encoder.seed)
    return plot_tsne(entry, Split(test_set, test_cfg), run, path, pool=pool, options=options, title=title)


def embed(
    encoder: EncoderChoice,
    out: str | os.PathLike,
    data: DataChoice | None = None,
    features: FeatureOptions | None = None,
    split: str = "train",
    num_workers: int = 0,
) -> dict[str, Any]:
    """:func:`~mimkit.eval.embed.write_embeddings` of ``split`` (``"train"``: a folder's images, or
    ``"test"``) of ``data`` (default: the run's own; ``DataChoice(source="folder", root=...)`` for another
    folder, ``train_limit`` / ``test_limit`` cap the split) to ``out`` (``.npy``, its index ``.csv``).

    Raises:
        ValueError: an unknown split, an output that is not ``.npy``, or no encoder weights.
    """
    data, features = data or DataChoice(), features or FeatureOptions()
    if split not in ("train", "test"):
        raise ValueError(f"split must be one of train, test, got {split!r}")
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must name a .npy file (its index goes next to it as .csv), got {str(out)!r}")
    loaded = load_encoder(encoder, data)
    if loaded.encoder is None:
        raise ValueError("embedding needs a trained encoder: give a run, a checkpoint or an encoder file")
    data_cfg = dataclasses.replace(
        loaded.data, limit=data.train_limit if split == "train" else data.test_limit
    )
    images = Split(build_dataset(data_cfg, split), data_cfg)
    entry = encoders(loaded, False, encoder.seed)[0]
    run = settle(features)
    return write_embeddings(entry, images, run, out, pool=features.pool, num_workers=num_workers)


def predict(
    run: str | os.PathLike,
    folder: str | os.PathLike,
    out: str | os.PathLike = "predictions.csv",
    *,
    topk: int = 5,
    features: FeatureOptions | None = None,
    num_workers: int = 0,
    convert_channels: bool = False,
) -> dict[str, Any]:
    """The ``topk`` classes of every image under ``folder`` by the classifier of the fine-tuning run ``run``
    (or of a pretraining run's ``eval/finetune``), written to ``out`` (CSV):
    :func:`~mimkit.eval.predict.write_predictions`. ``features`` gives the batch size, device and precision
    (default: batches of 256 in fp32, the precision the held-out score was measured in).

    Returns:
        ``{"rows", "topk", "skipped", "path", "seconds", "classifier"}`` (the fine-tuning run directory).
    """
    features = features or FeatureOptions(batch_size=256, precision="fp32")
    csv_path(out)
    saved = load_classifier(run)
    check_topk(topk, len(saved.classes))
    dataset = folder_dataset(saved, folder, convert_channels)
    result = write_predictions(saved, dataset, settle(features), out, topk=topk, num_workers=num_workers)
    return {**result, "classifier": saved.run_dir}


def evaluate_finetune(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    *,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    train_blocks: int | None = None,
    label_fraction: float = 1.0,
    random_init: bool = False,
) -> dict[str, Any]:
    """Fine-tune (full, or partial with ``train_blocks``) on ``label_fraction`` of the labels.

    The recipe is planned from the labeled images it trains on and the encoder
    (:func:`~mimkit.eval.planner.choose_finetune`: printed as a table, recorded in ``out_dir/plan.json``);
    ``overrides`` are ``key=value`` settings of :class:`~mimkit.eval.recipe.FinetuneConfig` that win over
    the plan (``train.epochs=50``, ``layer_decay=0.65``, ``mixup=0``, ...). The run lives in ``out_dir`` and
    resumes.
    ``random_init`` trains from scratch with :func:`~mimkit.eval.label_efficiency.scratch_recipe` (no
    layer-wise lr decay) unless ``overrides`` set ``layer_decay``.

    Returns:
        The result of :func:`~mimkit.eval.finetune.finetune` plus ``init`` and ``label_fraction``.
    """
    data = data or DataChoice()
    check_fraction(label_fraction)
    load_recipe(FinetuneConfig, overrides)  # a bad setting is named before anything loads
    if encoder.teacher and random_init:
        raise ValueError("--teacher and --random-init exclude each other: one encoder is fine-tuned")
    loaded = load_encoder(encoder, data)
    if loaded.encoder is None and not random_init:
        raise ValueError("fine-tuning needs a checkpoint to start from, or --random-init for the baseline")
    train, test = load_splits(loaded.data, data.train_limit, data.test_limit, "fine-tuning")
    train_set = train.dataset
    init = "random init" if random_init else loaded.label
    out = out_dir_for(loaded, out_dir, "finetune")
    if label_fraction < 1:
        subsets = label_subsets(train_set.labels, [label_fraction], encoder.seed, out / "label_subsets.json")
        train_set = subset_dataset(train_set, subsets[label_fraction])
    given = parse_overrides(list(overrides))
    device = resolve_device(given.get("train", {}).get("device", "auto")).type
    shape = EncoderShape.of(loaded.encoder_cfg, loaded.encoder)
    cfg, plan = choose_finetune(train_set, shape, overrides, device)
    if random_init and "layer_decay" not in given:
        cfg = scratch_recipe(cfg)  # no layer-wise decay from scratch, unless asked for
    if train_blocks is not None:
        cfg = dataclasses.replace(cfg, train_blocks=train_blocks)
    start = None if random_init else loaded.encoder
    classifier = build_classifier(loaded.encoder_cfg, train_set.num_classes, start, cfg, seed=encoder.seed)
    config = {
        "encoder": dict(loaded.encoder_cfg, init=init),
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "label_fraction": label_fraction,
    }
    if is_main_process():
        write_plan(out, plan)
    result = finetune(classifier, train_set, test.dataset, cfg, out, config=config)
    return {**result, "init": init, "label_fraction": label_fraction}


def evaluate_label_efficiency(
    encoder: EncoderChoice,
    data: DataChoice | None = None,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    epochs: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    include_random: bool = True,
) -> list[dict[str, Any]]:
    """Fine-tune ``{pretrained, random init} x fractions``; writes a table, a CSV and a plot in ``out_dir``.

    Each fraction's recipe is planned from the images it leaves (as :func:`evaluate_finetune`'s), with
    ``overrides`` on top.

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
    loaded = load_encoder(encoder, data)
    train, test = load_splits(loaded.data, data.train_limit, data.test_limit, "label efficiency")
    options = LabelEfficiencyOptions(
        fractions=fractions,
        recipe=cfg,
        epochs=dict(zip(fractions, epochs, strict=True)) if epochs is not None else None,
        seed=encoder.seed,
        include_random=include_random or loaded.encoder is None,
        pretrained_label=loaded.label,
        plan_overrides=list(overrides),
    )
    out = out_dir_for(loaded, out_dir, "label_efficiency")
    config = {"checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None}
    return run_label_efficiency(
        loaded.encoder_cfg, loaded.encoder, train.dataset, test.dataset, out, options=options, config=config
    )
