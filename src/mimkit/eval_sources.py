"""Where an evaluation's encoder and data come from: paths and names resolved into modules and datasets.

The layer above :mod:`mimkit.eval`, which takes modules only. :class:`EncoderChoice` (a run, a checkpoint,
an encoder file with its architecture's name or a name alone; student or SiT's EMA teacher),
:class:`DataChoice` and :class:`FeatureOptions` carry what every protocol shares; :func:`load_encoder`
resolves them, :func:`encoders` gives the entries to score and :func:`settle` their feature pass.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.data import DataConfig, ImageDataset, build_dataset
from mimkit.engine import dist
from mimkit.engine.precision import PRECISIONS, resolve_precision
from mimkit.eval.cache import default_cache_dir
from mimkit.eval.features import FeaturePass
from mimkit.eval.frozen import Encoder, Split
from mimkit.eval.saved import is_classifier_run, load_classifier
from mimkit.models.hf_names import encoder_config
from mimkit.pretrain import build_encoder, load_pretrained, resolve_checkpoint
from mimkit.weights import extract_state_dict, is_model_dir, load_weights, read_checkpoint

POOLS = ("token", "avg")


@dataclass(frozen=True)
class EncoderChoice:
    """Where the evaluated encoder comes from.

    Attributes:
        checkpoint: a mimkit run directory or checkpoint, or an encoder-only file (with ``encoder_name``);
            None with ``encoder_name``: a randomly initialised encoder.
        encoder_name: the architecture an encoder-only file fits (``mimkit.list_encoders()``).
        teacher: take a SiT run's momentum (EMA) teacher instead of the student.
        seed: seed of random-init encoders and of label subsets.
        adapt_channels: an encoder-only file trained on another channel count than the data's gets its
            patch embedding adapted (:func:`mimkit.weights.adapt_patch_embed`) instead of refused.
    """

    checkpoint: str | None = None
    encoder_name: str | None = None
    teacher: bool = False
    seed: int = 0
    adapt_channels: bool = False


@dataclass(frozen=True)
class DataChoice:
    """Which data: the run's own unless ``source`` / ``root`` say otherwise; limits count images per split."""

    source: str | None = None
    root: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive number of images, got {value!r}")


@dataclass(frozen=True)
class FeatureOptions:
    """How the frozen protocols compute features: pooling, batch, device, precision and cache."""

    pool: str = "token"
    batch_size: int = 512
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


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


def load_encoder(choice: EncoderChoice, data: DataChoice | None = None) -> LoadedEncoder:
    """Resolve an encoder choice (see the module docstring) into an encoder and the data to use.

    ``choice.teacher`` takes the method's momentum (EMA) teacher encoder instead of the student, as
    DINO-style evaluations do; only a mimkit pretraining checkpoint of a method with a teacher (SiT) has one.

    Raises:
        ValueError: no checkpoint and no encoder name; a checkpoint without encoder weights; weights that
            do not fit ``encoder_name``; ``teacher`` for a checkpoint without a teacher.
        FileNotFoundError: no such checkpoint or run directory.
    """
    checkpoint, encoder_name, teacher = choice.checkpoint, choice.encoder_name, choice.teacher
    source, root = (data.source, data.root) if data is not None else (None, None)
    path = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    if path is not None:
        _check_has_encoder(path)
    if teacher and (path is None or encoder_name is not None):
        raise ValueError("--teacher needs a mimkit pretraining run or checkpoint (without --encoder)")
    if encoder_name is None and path is not None and is_classifier_run(path):
        if teacher:
            raise ValueError(f"{path} is a fine-tuning run: it has no teacher encoder; drop --teacher")
        return _fine_tuned_encoder(path, source, root)
    arch: dict[str, Any] | None = None
    if encoder_name is None and path is not None and is_model_dir(path):  # transformers / timm: its config
        arch = encoder_config(path)
    if encoder_name is None and arch is None:
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
    encoder_cfg = {
        **(arch or {"name": encoder_name}),
        "img_size": list(sample.img_size),
        "in_chans": sample.channels,
    }
    encoder = None
    if path is not None:
        encoder = build_encoder(encoder_cfg)
        load_weights(encoder, path, adapt_channels=choice.adapt_channels)
    return LoadedEncoder(encoder, encoder_cfg, data, path, None)


def _fine_tuned_encoder(path: Path, source: str | None, root: str | None) -> LoadedEncoder:
    """The encoder of a fine-tuned classifier (``classifier.json`` beside the checkpoint), evaluated on the
    data of the pretraining run it started from, or on ``source`` / ``root`` when given."""
    saved = load_classifier(path)
    encoder = saved.classifier.encoder
    encoder_cfg = {**saved.record["encoder"], "num_classes": 0}
    started = saved.config.get("checkpoint")
    if not started or not Path(started).exists():
        if not root:
            raise ValueError(
                f"{saved.run_dir} was fine-tuned from {started or 'an encoder file'}, which is not here to "
                "say what data it read: give the data with --data-root"
            )
        stats = {key: saved.record[key] for key in ("img_size", "mean", "std")}
        stats["channels"] = saved.record["encoder"].get("in_chans", len(saved.record["mean"]))
        data = eval_data_config(DataConfig(source=source or "folder", root=root), stats, source, root)
    else:
        _, cfg, stats = load_pretrained(started)
        data = eval_data_config(cfg.data, stats, source, root)
    return LoadedEncoder(encoder, encoder_cfg, data, saved.checkpoint, saved.run_dir)


def eval_data_config(
    cfg_data: DataConfig, stats: dict[str, Any], source: str | None, root: str | None
) -> DataConfig:
    """A run's data for evaluation: same source and size, no augmentation, the run's normalisation."""
    changes: dict[str, Any] = {"augment": "none", "limit": None, "crop_scale": None, "crop_ratio": None}
    if source or root:  # other data than the run's: not its labeled folder either
        changes["labeled_root"] = None
    # shards hold pretraining images only: evaluate on the run's labeled folder, else on --data-root
    if not source and cfg_data.source == "shards" and not (cfg_data.labeled_root and not root):
        if not root:
            raise ValueError(
                "this run pretrained on shards, which hold no evaluation split: give a folder of images "
                "with --data-root"
            )
        source = "folder"
    if source:
        changes["source"] = source
    if root:
        changes["root"] = root
    if stats:
        changes.update(
            img_size=list(stats["img_size"]),
            channels=stats["channels"],
            normalize=[list(stats["mean"]), list(stats["std"])],
            clip=stats.get("clip"),
        )
    return dataclasses.replace(cfg_data, **changes)


def require_labels(dataset: ImageDataset, protocol: str) -> None:
    if dataset.num_classes == 0:
        raise ValueError(
            f"{protocol} needs labeled data, but the {dataset.split} split at {dataset.root!r} has no class "
            "labels (folders: one sub-folder per class; IDX: a labels file)"
        )


def load_splits(
    data: DataConfig, train_limit: int | None, test_limit: int | None, protocol: str
) -> tuple[Split, Split]:
    """The training and test splits of ``data``, both labeled (else a ValueError naming ``protocol``)."""
    train_cfg = dataclasses.replace(data, limit=train_limit)
    test_cfg = dataclasses.replace(data, limit=test_limit)
    train_set = build_dataset(train_cfg, "train")
    require_labels(train_set, protocol)
    test_set = build_dataset(test_cfg, "test", train_dataset=train_set)
    require_labels(test_set, protocol)
    return Split(train_set, train_cfg), Split(test_set, test_cfg)


def random_encoder(encoder_cfg: dict[str, Any], seed: int, **key: Any) -> Encoder:
    """``"random init"``: ``encoder_cfg`` with weights drawn from ``seed``; ``key`` adds to its cache key."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_encoder(encoder_cfg)
    key = {"encoder": encoder_cfg, "init": "random", "seed": seed, **key}
    return Encoder("random init", module, None, key)


def encoders(loaded: LoadedEncoder, compare_random: bool, seed: int) -> list[Encoder]:
    """The loaded encoder (if any) and, if asked for or without one, a random init drawn from ``seed``."""
    found = []
    if loaded.encoder is not None:
        # the student's key has no "weights" entry, so caches written before --teacher existed stay valid
        key = {"encoder": loaded.encoder_cfg} | ({"weights": "teacher"} if loaded.teacher else {})
        found.append(Encoder(loaded.label, loaded.encoder, loaded.checkpoint, key))
    if compare_random or loaded.encoder is None:
        found.append(random_encoder(loaded.encoder_cfg, seed))
    return found


def settle(options: FeatureOptions, cache_dir: Path | None = None) -> FeaturePass:
    """The feature pass of ``options`` in this process, settled once: the process group started (under
    torchrun: this process's GPU) and ``"auto"`` precision resolved, with its log line."""
    env = dist.setup(options.device)
    precision = resolve_precision(options.precision, env.device, announce=env.is_main).precision
    return FeaturePass(env.device, precision, options.batch_size, cache_dir, env.rank, env.world_size)


def cache_dir_for(loaded: LoadedEncoder, options: FeatureOptions) -> Path | None:
    """``options.cache_dir``, else the run's ``eval/feature_cache``, else the default; None: no cache."""
    if not options.use_cache:
        return None
    if options.cache_dir is not None:
        return Path(options.cache_dir)
    return loaded.run_dir / "eval" / "feature_cache" if loaded.run_dir is not None else default_cache_dir()


def out_dir_for(loaded: LoadedEncoder, out_dir: str | os.PathLike | None, protocol: str) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    name = f"{protocol}_teacher" if loaded.teacher else protocol  # its runs never resume the student's
    return (loaded.run_dir / "eval" if loaded.run_dir is not None else Path("runs") / "eval") / name
