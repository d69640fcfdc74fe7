"""``mimkit eval knn|linear|finetune|label-efficiency|tsne``: each protocol is a plain typed function here.

Every protocol takes any encoder checkpoint: a mimkit run directory or checkpoint (the method is rebuilt
and its encoder taken), or an encoder-only file (reference MAE, timm-style ViT, a mimkit ``.safetensors``
export) with ``--encoder NAME`` to build the model it fits; ``--encoder NAME`` without a checkpoint is a
randomly initialised encoder. The frozen protocols (kNN, linear probe, t-SNE) share one feature pass:
features are cached per checkpoint, data, split, pooling and precision (:mod:`mimkit.eval.cache`); the
feature pass runs in the precision the device runs natively (``--precision auto``: bf16 where the CPU or GPU
has native bf16, else fp32 / fp16) unless ``--precision`` says otherwise.

    mimkit eval knn runs/mae --k 10 20 100 --compare-random
    mimkit eval linear runs/mae --pool token --set epochs=90 "blrs=[0.1, 0.3, 1.0]"
    mimkit eval finetune runs/mae --train-blocks 4 --set train.epochs=50 layer_decay=0.75
    mimkit eval label-efficiency runs/mae --fractions 0.01 0.1 1 --epochs 200 60 30
    mimkit eval tsne runs/mae --out tsne.png
    mimkit eval knn runs/sit --teacher     # SiT's momentum teacher instead of the student

``add_eval_parsers(subparsers)`` adds the ``eval`` parser to the main CLI; ``run_eval(args)`` runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn

from mimkit.data import DataConfig, ImageDataset, build_dataset
from mimkit.engine.config import _build, merge, parse_overrides, to_dict
from mimkit.engine.dist import resolve_device
from mimkit.engine.precision import PRECISIONS, auto_to_native, resolve_precision
from mimkit.eval.cache import cached_features, default_cache_dir, feature_key
from mimkit.eval.finetune import FinetuneConfig, build_classifier, finetune
from mimkit.eval.knn import knn_accuracy
from mimkit.eval.label_efficiency import (
    DEFAULT_FRACTIONS,
    check_fraction,
    label_subsets,
    run_label_efficiency,
    scratch_recipe,
    subset_dataset,
)
from mimkit.eval.linear import LinearProbeConfig, holdout_summary, linear_probe
from mimkit.pretrain import build_encoder, load_pretrained, resolve_checkpoint
from mimkit.weights import extract_state_dict, load_weights, read_checkpoint

log = logging.getLogger("mimkit")
T = TypeVar("T")

PROTOCOLS = ("knn", "linear", "finetune", "label-efficiency", "tsne")


# ----------------------------------------------------------------------------- encoders and data


@dataclass
class LoadedEncoder:
    """What a checkpoint argument resolves to.

    Attributes:
        encoder: the loaded encoder, or None (``--encoder NAME`` without a checkpoint).
        encoder_cfg: ``{"name", ..., "img_size", "in_chans"}``: rebuilds the same architecture.
        data: the data config to evaluate on (the run's, without augmentation, with its normalisation).
        checkpoint: the checkpoint file, or None.
        run_dir: the mimkit run directory the checkpoint belongs to, or None for other files.
        teacher: ``encoder`` is the method's momentum teacher, not the student.
    """

    encoder: nn.Module | None
    encoder_cfg: dict[str, Any]
    data: DataConfig
    checkpoint: Path | None
    run_dir: Path | None
    teacher: bool = False

    @property
    def label(self) -> str:
        """The name of the loaded encoder's rows in results: "teacher" or "pretrained"."""
        return "teacher" if self.teacher else "pretrained"


def _check_has_encoder(path: Path) -> None:
    """A one-line ValueError naming ``path`` if the file holds no encoder weights."""
    try:
        state = extract_state_dict(read_checkpoint(path))
    except ValueError as err:
        raise ValueError(f"{path} holds no encoder: {err}") from None
    if not any(k.endswith("patch_embed.proj.weight") for k in state):
        shown = ", ".join(sorted(state)[:4])
        raise ValueError(
            f"{path} holds no encoder: none of its {len(state)} weights is a patch embedding "
            f"('patch_embed.*' or 'encoder.patch_embed.*'; it has {shown}, ...); give a pretraining run or "
            "checkpoint, or an encoder file with --encoder NAME"
        )


def load_encoder(
    checkpoint: str | os.PathLike | None,
    encoder_name: str | None = None,
    source: str | None = None,
    root: str | None = None,
    teacher: bool = False,
) -> LoadedEncoder:
    """Resolve a checkpoint argument (see the module docstring) into an encoder and the data to use.

    ``teacher`` takes the method's momentum (EMA) teacher encoder instead of the student, as DINO-style
    evaluations do; only a mimkit pretraining checkpoint of a method with a teacher (SiT) has one.

    Raises:
        ValueError: no checkpoint and no encoder name; a checkpoint without encoder weights; weights that
            do not fit ``encoder_name``; ``teacher`` for a checkpoint without a teacher.
        FileNotFoundError: no such checkpoint or run directory.
    """
    path = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    if path is not None:
        _check_has_encoder(path)
    if teacher and (path is None or encoder_name is not None):
        raise ValueError("--teacher needs a mimkit pretraining run or checkpoint (without --encoder)")
    if encoder_name is None:
        if path is None:
            raise ValueError("give a checkpoint (or run directory), or --encoder NAME for a random encoder")
        method, cfg, stats = load_pretrained(path)
        encoder = method.encoder
        if teacher:
            encoder = getattr(method, "teacher_encoder", None)
            if encoder is None:
                raise ValueError(
                    f"{path} holds no teacher encoder: its method {cfg.method['name']!r} has none "
                    "(SiT keeps one); drop --teacher"
                )
        encoder_cfg = dict(cfg.encoder)
        if stats:
            encoder_cfg.update(img_size=list(stats["img_size"]), in_chans=stats["channels"])
        data = eval_data_config(cfg.data, stats, source, root)
        return LoadedEncoder(encoder, encoder_cfg, data, path, path.parent, teacher)
    data = DataConfig(source=source or "fashion_mnist", augment="none", **({"root": root} if root else {}))
    sample = build_dataset(dataclasses.replace(data, limit=1), "train")
    encoder_cfg = {"name": encoder_name, "img_size": list(sample.img_size), "in_chans": sample.channels}
    encoder = None
    if path is not None:
        encoder = build_encoder(encoder_cfg)
        load_weights(encoder, path)
    return LoadedEncoder(encoder, encoder_cfg, data, path, None)


def eval_data_config(
    cfg_data: DataConfig, stats: dict[str, Any], source: str | None, root: str | None
) -> DataConfig:
    """A run's data for evaluation: same source and size, no augmentation, the run's normalisation."""
    changes: dict[str, Any] = {"augment": "none", "limit": None, "crop_scale": None, "crop_ratio": None}
    if source:
        changes["source"] = source
    if root:
        changes["root"] = root
    if stats:
        changes.update(
            img_size=list(stats["img_size"]),
            channels=stats["channels"],
            normalize=[list(stats["mean"]), list(stats["std"])],
        )
    return dataclasses.replace(cfg_data, **changes)


def _require_labels(dataset: ImageDataset, protocol: str) -> None:
    if dataset.num_classes == 0:
        raise ValueError(
            f"{protocol} needs labeled data, but the {dataset.split} split at {dataset.root!r} has no class "
            "labels (folders: one sub-folder per class; IDX: a labels file)"
        )


def load_splits(
    data: DataConfig, train_limit: int | None, test_limit: int | None, protocol: str
) -> tuple[ImageDataset, ImageDataset, DataConfig, DataConfig]:
    """``(train, test, train data config, test data config)``, both splits labeled (else a ValueError)."""
    train_cfg = dataclasses.replace(data, limit=train_limit)
    test_cfg = dataclasses.replace(data, limit=test_limit)
    train_set = build_dataset(train_cfg, "train")
    _require_labels(train_set, protocol)
    test_set = build_dataset(test_cfg, "test", train_dataset=train_set)
    _require_labels(test_set, protocol)
    return train_set, test_set, train_cfg, test_cfg


def _random_encoder(encoder_cfg: dict[str, Any], seed: int) -> nn.Module:
    """The encoder at random init, drawn from ``seed`` (as ``mimkit knn --compare-random``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_encoder(encoder_cfg)


def _encoders(
    loaded: LoadedEncoder, compare_random: bool, seed: int
) -> Iterator[tuple[str, nn.Module, Path | None, dict[str, Any]]]:
    """``(name, encoder, checkpoint, cache-key extras)`` of the pretrained and/or random-init encoder."""
    if loaded.encoder is not None:
        # the student's key has no "weights" entry, so caches written before --teacher existed stay valid
        extra = {"encoder": loaded.encoder_cfg} | ({"weights": "teacher"} if loaded.teacher else {})
        yield loaded.label, loaded.encoder, loaded.checkpoint, extra
    if compare_random or loaded.encoder is None:
        extra = {"encoder": loaded.encoder_cfg, "init": "random", "seed": seed}
        yield "random init", _random_encoder(loaded.encoder_cfg, seed), None, extra


def _cache_dir(loaded: LoadedEncoder, cache_dir: str | os.PathLike | None, use_cache: bool) -> Path | None:
    if not use_cache:
        return None
    if cache_dir is not None:
        return Path(cache_dir)
    return loaded.run_dir / "eval" / "feature_cache" if loaded.run_dir is not None else default_cache_dir()


def _out_dir(loaded: LoadedEncoder, out_dir: str | os.PathLike | None, protocol: str) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    name = f"{protocol}_teacher" if loaded.teacher else protocol  # its runs never resume the student's
    return (loaded.run_dir / "eval" if loaded.run_dir is not None else Path("runs") / "eval") / name


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _features(
    name_encoder: tuple[str, nn.Module, Path | None, dict[str, Any]],
    dataset: ImageDataset,
    data_cfg: DataConfig,
    split: str,
    pool: str,
    cache_dir: Path | None,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    _, encoder, checkpoint, extra = name_encoder
    precision = auto_to_native(precision, device)  # cached under what ran, so bf16 and fp32 never mix
    key = feature_key(checkpoint, data_cfg, split, pool, {**extra, "precision": precision})
    return cached_features(encoder, dataset, key, cache_dir, pool, batch_size, device, precision)


def load_recipe(cls: type[T], overrides: Sequence[str] = ()) -> T:
    """A recipe dataclass (:class:`LinearProbeConfig`, :class:`FinetuneConfig`) from its defaults and
    ``key.sub=value`` overrides (unknown keys are errors naming the key)."""
    return _build(cls, merge(to_dict(cls()), parse_overrides(list(overrides))), "")


# ----------------------------------------------------------------------------- protocols


def run_eval_knn(
    checkpoint: str | None = None,
    encoder_name: str | None = None,
    ks: Sequence[int] = (10, 20, 100, 200),
    pool: str = "token",
    compare_random: bool = False,
    source: str | None = None,
    root: str | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    batch_size: int = 512,
    device: str = "auto",
    cache_dir: str | None = None,
    use_cache: bool = True,
    seed: int = 0,
    teacher: bool = False,
    precision: str = "auto",
) -> dict[str, dict[int, float]]:
    """Weighted kNN top-1 (%) for every ``k`` from one feature pass.

    Returns:
        ``{"pretrained": {k: %}, "random init": {k: %}}`` (each when asked for / available).
    """
    loaded = load_encoder(checkpoint, encoder_name, source, root, teacher)
    train_set, test_set, train_cfg, test_cfg = load_splits(loaded.data, train_limit, test_limit, "kNN")
    bad = [k for k in ks if not 1 <= k <= len(train_set)]
    if bad:
        raise ValueError(
            f"k={bad[0]} is outside [1, {len(train_set)}]: the memory bank has {len(train_set)} "
            "training images"
        )
    dev = resolve_device(device)
    cache = _cache_dir(loaded, cache_dir, use_cache)
    results = {}
    for entry in _encoders(loaded, compare_random, seed):
        train_f, train_y = _features(
            entry, train_set, train_cfg, "train", pool, cache, batch_size, dev, precision
        )
        test_f, test_y = _features(entry, test_set, test_cfg, "test", pool, cache, batch_size, dev, precision)
        results[entry[0]] = knn_accuracy(train_f, train_y, test_f, test_y, ks=tuple(ks))
    return results


def run_eval_linear(
    checkpoint: str | None = None,
    encoder_name: str | None = None,
    pool: str = "token",
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    compare_random: bool = False,
    source: str | None = None,
    root: str | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    batch_size: int = 512,
    device: str = "auto",
    cache_dir: str | None = None,
    use_cache: bool = True,
    seed: int = 0,
    teacher: bool = False,
    precision: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Linear probe (BatchNorm + Linear, LARS, blr chosen on held-out training features).

    ``overrides`` are ``key=value`` settings of :class:`~mimkit.eval.linear.LinearProbeConfig`
    (``epochs=90``, ``"blrs=[0.1, 1.0]"``, ...). Runs live in ``out_dir/<encoder>``.

    Returns:
        ``{"pretrained": result, "random init": result}`` with the results of :func:`linear_probe`.
    """
    cfg = load_recipe(LinearProbeConfig, [f"device={device}", *overrides])
    loaded = load_encoder(checkpoint, encoder_name, source, root, teacher)
    train_set, test_set, train_cfg, test_cfg = load_splits(
        loaded.data, train_limit, test_limit, "the linear probe"
    )
    dev = resolve_device(device)
    cache = _cache_dir(loaded, cache_dir, use_cache)
    out = _out_dir(loaded, out_dir, "linear")
    results = {}
    for entry in _encoders(loaded, compare_random, seed):
        train_f, train_y = _features(
            entry, train_set, train_cfg, "train", pool, cache, batch_size, dev, precision
        )
        test_f, test_y = _features(entry, test_set, test_cfg, "test", pool, cache, batch_size, dev, precision)
        results[entry[0]] = linear_probe(
            train_f, train_y, test_f, test_y, out / f"{_slug(entry[0])}_{pool}", cfg
        )
    return results


def run_eval_finetune(
    checkpoint: str | None = None,
    encoder_name: str | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    train_blocks: int | None = None,
    label_fraction: float = 1.0,
    random_init: bool = False,
    source: str | None = None,
    root: str | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    teacher: bool = False,
) -> dict[str, Any]:
    """Fine-tune (full, or partial with ``train_blocks``) on ``label_fraction`` of the labels.

    ``overrides`` are ``key=value`` settings of :class:`~mimkit.eval.finetune.FinetuneConfig`
    (``train.epochs=50``, ``layer_decay=0.65``, ``mixup=0``, ...). The run lives in ``out_dir`` and resumes.
    ``random_init`` trains from scratch with :func:`~mimkit.eval.label_efficiency.scratch_recipe` (no
    layer-wise lr decay) unless ``overrides`` set ``layer_decay``.

    Returns:
        The result of :func:`~mimkit.eval.finetune.finetune` plus ``init`` and ``label_fraction``.
    """
    check_fraction(label_fraction)
    cfg = load_recipe(FinetuneConfig, overrides)
    if random_init and "layer_decay" not in parse_overrides(list(overrides)):
        cfg = scratch_recipe(cfg)  # no layer-wise decay from scratch, unless asked for
    if train_blocks is not None:
        cfg = dataclasses.replace(cfg, train_blocks=train_blocks)
    if teacher and random_init:
        raise ValueError("--teacher and --random-init exclude each other: one encoder is fine-tuned")
    loaded = load_encoder(checkpoint, encoder_name, source, root, teacher)
    if loaded.encoder is None and not random_init:
        raise ValueError("fine-tuning needs a checkpoint to start from, or --random-init for the baseline")
    train_set, test_set, _, _ = load_splits(loaded.data, train_limit, test_limit, "fine-tuning")
    init = "random init" if random_init else loaded.label
    out = _out_dir(loaded, out_dir, "finetune")
    if label_fraction < 1:
        subsets = label_subsets(train_set.labels, [label_fraction], seed, out / "label_subsets.json")
        train_set = subset_dataset(train_set, subsets[label_fraction])
    classifier = build_classifier(
        loaded.encoder_cfg, train_set.num_classes, None if random_init else loaded.encoder, cfg, seed=seed
    )
    config = {
        "encoder": dict(loaded.encoder_cfg, init=init),
        "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
        "label_fraction": label_fraction,
    }
    result = finetune(classifier, train_set, test_set, cfg, out, config=config)
    return {**result, "init": init, "label_fraction": label_fraction}


def run_eval_label_efficiency(
    checkpoint: str | None = None,
    encoder_name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    epochs: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | None = None,
    include_random: bool = True,
    source: str | None = None,
    root: str | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    teacher: bool = False,
) -> list[dict[str, Any]]:
    """Fine-tune ``{pretrained, random init} x fractions``; writes a table, a CSV and a plot in ``out_dir``.

    Args:
        epochs: one per fraction (default: the recipe's ``train.epochs`` for all).
    """
    fractions = [check_fraction(f) for f in fractions]
    if epochs is not None and len(epochs) != len(fractions):
        raise ValueError(
            f"give one epoch count per fraction: {len(fractions)} fractions, {len(epochs)} epochs"
        )
    cfg = load_recipe(FinetuneConfig, overrides)
    loaded = load_encoder(checkpoint, encoder_name, source, root, teacher)
    train_set, test_set, _, _ = load_splits(loaded.data, train_limit, test_limit, "label efficiency")
    out = _out_dir(loaded, out_dir, "label_efficiency")
    by_fraction = dict(zip(fractions, epochs, strict=True)) if epochs is not None else None
    config = {"checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None}
    return run_label_efficiency(
        loaded.encoder_cfg,
        loaded.encoder,
        train_set,
        test_set,
        out,
        fractions,
        cfg,
        by_fraction,
        seed,
        include_random or loaded.encoder is None,
        config,
        pretrained_label=loaded.label,
    )


def run_eval_tsne(
    checkpoint: str | None = None,
    encoder_name: str | None = None,
    out: str | None = None,
    pool: str = "token",
    max_points: int | None = 2000,
    perplexity: float = 30.0,
    max_iter: int = 1000,
    random_init: bool = False,
    source: str | None = None,
    root: str | None = None,
    test_limit: int | None = None,
    batch_size: int = 512,
    device: str = "auto",
    cache_dir: str | None = None,
    use_cache: bool = True,
    seed: int = 0,
    teacher: bool = False,
    precision: str = "auto",
) -> Path:
    """PNG of the t-SNE of test-set features coloured by class (needs scikit-learn)."""
    loaded = load_encoder(checkpoint, encoder_name, source, root, teacher)
    test_cfg = dataclasses.replace(loaded.data, limit=test_limit)
    test_set = build_dataset(test_cfg, "test")
    _require_labels(test_set, "the t-SNE plot")
    entries = list(_encoders(loaded, random_init, seed))
    entry = entries[-1] if random_init else entries[0]
    features, labels = _features(
        entry,
        test_set,
        test_cfg,
        "test",
        pool,
        _cache_dir(loaded, cache_dir, use_cache),
        batch_size,
        resolve_device(device),
        precision,
    )
    from mimkit.eval.tsne import save_tsne

    path = (
        Path(out)
        if out is not None
        else _out_dir(loaded, None, "tsne") / f"tsne_{_slug(entry[0])}_{pool}.png"
    )
    title = (
        f"{loaded.encoder_cfg['name']} ({entry[0]}, {pool} features), t-SNE of {len(features)} test images"
    )
    return save_tsne(features, labels, path, test_set.classes, max_points, perplexity, seed, title, max_iter)


# ----------------------------------------------------------------------------- command line


# Recipe settings (key.sub=value) come after --set: trailing positionals cannot follow options in argparse.
_SET: dict[str, Any] = dict(dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")


def _common(p: argparse.ArgumentParser, frozen: bool) -> None:
    p.add_argument("checkpoint", nargs="?", help="run directory, mimkit checkpoint, or encoder file")
    p.add_argument(
        "--encoder", dest="encoder_name", help="encoder name, for an encoder-only file (or none: random)"
    )
    p.add_argument("--source", help="data source (default: the run's)")
    p.add_argument("--data-root", dest="root", help="data root (default: the run's)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="use only the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher",
        action="store_true",
        help="evaluate the run's momentum teacher encoder instead of the student (SiT)",
    )
    if frozen:
        p.add_argument(
            "--pool",
            choices=["token", "avg"],
            default="token",
            help="class token or mean of the patch tokens",
        )
        p.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch size")
        p.add_argument("--device", default="auto")
        p.add_argument(
            "--precision",
            choices=PRECISIONS,
            default="auto",
            help="of the feature pass (auto: bf16 where the device has it natively, else fp32)",
        )
        p.add_argument("--cache-dir", help="feature cache (default: <run>/eval/feature_cache)")
        p.add_argument(
            "--no-cache", dest="use_cache", action="store_false", help="do not read or write the cache"
        )


KNN_HELP = "weighted kNN (cosine, exp(sim/0.07) votes) for several k, one feature pass"


def add_knn_parser(subparsers: argparse._SubParsersAction, name: str, help: str = KNN_HELP) -> None:
    """The kNN protocol's parser; ``mimkit knn`` and ``mimkit eval knn`` are the same command."""
    p = subparsers.add_parser(name, help=help)
    _common(p, frozen=True)
    p.add_argument("--k", dest="ks", type=int, nargs="+", default=[10, 20, 100, 200])
    p.add_argument("--compare-random", action="store_true", help="also score the encoder at random init")
    p.set_defaults(protocol="knn")


def add_eval_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval <protocol>`` to the main parser's subcommands; returns the ``eval`` parser."""
    parser = subparsers.add_parser(
        "eval", help="evaluate an encoder: knn, linear, finetune, label-efficiency, tsne"
    )
    sub = parser.add_subparsers(dest="protocol", required=True)

    add_knn_parser(sub, "knn")

    p = sub.add_parser(
        "linear", help="linear probe: BatchNorm + Linear, LARS, blr chosen on held-out train data"
    )
    _common(p, frozen=True)
    p.add_argument("--out", dest="out_dir", help="run directory (default: <run>/eval/linear)")
    p.add_argument("--compare-random", action="store_true", help="also probe the encoder at random init")
    p.add_argument("--set", **_SET, help='linear-probe settings, e.g. --set epochs=90 "blrs=[0.1, 1.0]"')

    p = sub.add_parser(
        "finetune", help="full or partial fine-tuning (layer decay, MixUp/CutMix, RandAugment)"
    )
    _common(p, frozen=False)
    p.add_argument("--out", dest="out_dir", help="run directory (default: <run>/eval/finetune)")
    p.add_argument(
        "--train-blocks", type=int, help="partial fine-tuning: train only the last K blocks (0: head)"
    )
    p.add_argument("--label-fraction", type=float, default=1.0, help="fraction of the labels, in (0, 1]")
    p.add_argument("--random-init", action="store_true", help="start from a random encoder (the baseline)")
    p.add_argument("--set", **_SET, help="fine-tuning settings, e.g. --set train.epochs=50 layer_decay=0.65")

    p = sub.add_parser(
        "label-efficiency", help="fine-tune {pretrained, random} x {1%%, 10%%, 100%%} of the labels"
    )
    _common(p, frozen=False)
    p.add_argument("--out", dest="out_dir", help="output directory (default: <run>/eval/label_efficiency)")
    p.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS))
    p.add_argument(
        "--epochs", type=int, nargs="+", help="epochs per fraction (default: train.epochs for all)"
    )
    p.add_argument(
        "--no-random", dest="include_random", action="store_false", help="skip the random-init row"
    )
    p.add_argument("--set", **_SET, help="fine-tuning settings, e.g. --set train.epochs=50 mixup=0")

    p = sub.add_parser(
        "tsne", help="PNG of a t-SNE of test-set features coloured by class (needs scikit-learn)"
    )
    _common(p, frozen=True)
    p.add_argument("--out", "-o", help="PNG path (default: <run>/eval/tsne/tsne_<init>_<pool>.png)")
    p.add_argument("--max-points", type=int, default=2000, help="per-class sample of about this many points")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--max-iter", type=int, default=1000, help="t-SNE optimisation steps (>= 250)")
    p.add_argument("--random-init", action="store_true", help="plot the encoder at random init instead")
    return parser


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        checkpoint=args.checkpoint,
        encoder_name=args.encoder_name,
        source=args.source,
        root=args.root,
        seed=args.seed,
        teacher=args.teacher,
    )


def run_eval(args: argparse.Namespace) -> int:
    """Run the ``eval`` subcommand parsed by :func:`add_eval_parsers`; prints the results, returns 0.

    Errors (ValueError, FileNotFoundError, ImportError) propagate to the caller, which prints them
    in one line.
    """
    common = _common_kwargs(args)
    if hasattr(args, "precision"):  # one line saying what the feature passes run in (a warning if emulated)
        resolve_precision(args.precision, resolve_device(args.device))
    limits = dict(train_limit=args.train_limit, test_limit=args.test_limit)
    frozen = {
        name: getattr(args, name)
        for name in ("pool", "batch_size", "device", "precision", "cache_dir", "use_cache")
        if hasattr(args, name)
    }
    if args.protocol == "knn":
        results = run_eval_knn(
            ks=tuple(args.ks), compare_random=args.compare_random, **common, **limits, **frozen
        )
        for name, accs in results.items():
            scores = "  ".join(f"k={k}: {acc:.2f}%" for k, acc in accs.items())
            print(f"kNN top-1 ({args.pool} features) {name:>12}: {scores}")
    elif args.protocol == "linear":
        results = run_eval_linear(
            overrides=args.overrides,
            out_dir=args.out_dir,
            compare_random=args.compare_random,
            **common,
            **limits,
            **frozen,
        )
        for name, r in results.items():
            held = holdout_summary(r, "%")
            print(
                f"linear probe ({args.pool} features) {name:>12}: test top-1 {r['test_top1']:.2f}%  "
                f"(blr {r['best_blr']:g} chosen on {r['holdout_images']} held-out training images: {held})"
            )
    elif args.protocol == "finetune":
        r = run_eval_finetune(
            overrides=args.overrides,
            out_dir=args.out_dir,
            train_blocks=args.train_blocks,
            label_fraction=args.label_fraction,
            random_init=args.random_init,
            **common,
            **limits,
        )
        what = "full" if args.train_blocks is None else f"last {args.train_blocks} block(s)"
        print(
            f"fine-tune ({what}, {r['init']}, {100 * r['label_fraction']:g}% of the labels = "
            f"{r['train_images']} images, {r['steps']} steps): test top-1 {r['test_top1']:.2f}%"
        )
    elif args.protocol == "label-efficiency":
        rows = run_eval_label_efficiency(
            fractions=args.fractions,
            epochs=args.epochs,
            overrides=args.overrides,
            out_dir=args.out_dir,
            include_random=args.include_random,
            **common,
            **limits,
        )
        for r in rows:
            print(
                f"{r['init']:>12}  {100 * r['fraction']:>6g}% labels ({r['labels']} images): "
                f"test top-1 {r['test_top1']:.2f}%"
            )
    elif args.protocol == "tsne":
        path = run_eval_tsne(
            out=args.out,
            max_points=args.max_points,
            perplexity=args.perplexity,
            max_iter=args.max_iter,
            random_init=args.random_init,
            test_limit=args.test_limit,
            **common,
            **frozen,
        )
        print(f"wrote {path}")
    else:  # argparse only lets the protocols above through
        raise ValueError(f"unknown eval protocol {args.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return 0
