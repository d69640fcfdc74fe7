"""Pretraining from a config: build data, encoder and method, then run the one trainer.

Also rebuilds a trained method from a run's checkpoint (``load_pretrained``), for the CLI's
``reconstruct`` and ``knn``, and reads any saved model for ``from_pretrained`` (``open_model``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.data import DataConfig, build_augment, build_dataset
from mimkit.data.datasets import check_labeled_kind, holdout_folder
from mimkit.data.groups import check_explicit_split, check_recorded_split, draw_for
from mimkit.data.loader import process_loader
from mimkit.data.shards import ShardLoader, ShardSet
from mimkit.data.splits import SPLIT_FILE, read_split, write_split
from mimkit.engine import dist
from mimkit.engine.checkpoint import last_checkpoint, seed_everything
from mimkit.engine.config import PretrainConfig, _build, named_options, save_config, to_dict
from mimkit.engine.precision import auto_to_native
from mimkit.engine.runctl import RunLock
from mimkit.engine.trainer import Trainer
from mimkit.hub import CONFIG, FORMAT, WEIGHTS
from mimkit.methods import METHODS, create_method
from mimkit.models import ENCODERS, create_encoder
from mimkit.viz import DEFAULT_STRETCH, ReconstructionPictures
from mimkit.weights import is_model_dir, load_weights, read_checkpoint

log = logging.getLogger("mimkit")


def build_encoder(encoder_cfg: dict[str, Any], dataset=None) -> nn.Module:
    """The encoder of a config; input size and channels follow the data unless the config sets them."""
    name, options = named_options(encoder_cfg)
    if dataset is not None:
        options.setdefault("img_size", tuple(dataset.img_size))
        options.setdefault("in_chans", dataset.channels)
    return create_encoder(name, **options)


def data_stats(dataset) -> dict[str, Any]:
    """What a run's checkpoint records of its training data (normalisation, size, channels), for
    :func:`load_pretrained` and the evaluation to rebuild the encoder and its input."""
    stats = {
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "img_size": list(dataset.img_size),
        "channels": dataset.channels,
    }
    clip = getattr(dataset, "clip", None)
    if clip is not None:  # per-channel value range in stored units: the evaluation clips the same way
        stats["clip"] = [list(clip[0]), list(clip[1])]
    return stats


def with_data_stats(cfg: PretrainConfig, stats: dict[str, Any]) -> PretrainConfig:
    """``cfg`` with the training data's ``mean`` / ``std`` (:func:`data_stats`) given to a method that takes
    ``pixel_mean`` / ``pixel_std`` (SiT's views) where the method section sets neither."""
    name, options = named_options(cfg.method)
    wanted = {"pixel_mean", "pixel_std"}
    if wanted - set(inspect.signature(METHODS.get(name)).parameters) or wanted & set(options):
        return cfg
    return dataclasses.replace(
        cfg, method={**cfg.method, "pixel_mean": stats["mean"], "pixel_std": stats["std"]}
    )


def build_method(cfg: PretrainConfig, dataset=None, stats: dict[str, Any] | None = None) -> nn.Module:
    """The method of a config around its encoder; the input follows ``dataset`` (or a run's recorded
    ``stats``: image size and channels) unless the encoder section sets it, and so do the pixel statistics
    of a method that takes them (:func:`with_data_stats`)."""
    stats = stats or (data_stats(dataset) if dataset is not None else None)
    cfg = with_data_stats(cfg, stats) if stats else cfg
    encoder_cfg = dict(cfg.encoder)
    if stats:
        encoder_cfg.setdefault("img_size", tuple(stats["img_size"]))
        encoder_cfg.setdefault("in_chans", stats["channels"])
    name, options = named_options(cfg.method)
    return create_method(name, encoder=build_encoder(encoder_cfg, dataset), **options)


def build_trainer(
    cfg: PretrainConfig,
    dataset,
    method: nn.Module,
    run_dir: str | os.PathLike,
    *,
    config: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    callbacks=(),
) -> Trainer:
    """The trainer that pretrains ``method`` on ``dataset`` with ``cfg.train`` (its loader, the data's
    augmentation on the device, checkpoints in ``run_dir``); call ``.fit()`` on it.

    Args:
        config: what the checkpoint records as the run's config (default: ``cfg`` with the data's stats).
        identity: what a resume must match (default: the encoder and method sections).
        callbacks: ``on_epoch_end(epoch, model)`` objects, e.g. online kNN; their time is not training time.
    """
    env = dist.setup(cfg.train.device)
    if isinstance(dataset, ShardSet):
        loader = ShardLoader(
            dataset,
            cfg.train.batch_size,
            seed=cfg.train.seed,
            rank=env.rank,
            world_size=env.world_size,
            num_workers=cfg.data.num_workers,
            buffer=cfg.data.shuffle_buffer,
            pin_memory=env.device.type == "cuda",
        )
    else:
        batch, seed, workers = cfg.train.batch_size, cfg.train.seed, cfg.data.num_workers
        loader = process_loader(
            dataset, batch, env, shuffle=True, drop_last=True, seed=seed, num_workers=workers
        )
    if config is None:
        config = {**to_dict(cfg), "data_stats": data_stats(dataset)}
    picture = None
    if hasattr(method, "reconstruct") and hasattr(method, "encoder"):
        float_data = getattr(dataset, "dtype", torch.uint8) != torch.uint8
        picture = ReconstructionPictures(
            run_dir,
            dataset.mean,
            dataset.std,
            title=f"{cfg.method['name']} {cfg.encoder['name']}",
            stretch=DEFAULT_STRETCH if float_data else None,
        )
    return Trainer(
        method,
        loader,
        cfg.train,
        Path(run_dir),
        batch_transform=build_augment(cfg.data, dataset).to(env.device),
        env=env,
        config=config,
        identity=identity or {"encoder": cfg.encoder, "method": cfg.method},  # a resume: the same model
        extras={"grid_size": list(method.encoder.grid_size)} if hasattr(method, "encoder") else {},
        callbacks=callbacks,
        picture=picture,
    )


def prepare_split(cfg: PretrainConfig, is_main: bool = True) -> DataConfig:
    """The data config a run pretrains with: when its labeled folder (``data.labeled_root``, else a folder
    ``data.root``) has no test/ or val/, ``split_file`` names the file that records its held-out part,
    read if it exists (never redrawn), else drawn from ``train.seed`` and written by the main process.
    With ``data.group_by``, an explicit split (test/ or val/, an existing split file) that puts a group on
    both sides is refused, and a drawn one is drawn by group (:mod:`mimkit.data.groups`).
    """
    data = cfg.data
    check_explicit_split(data)
    found = holdout_folder(data) if data.holdout is not None else None
    if found is None:
        return data
    path = Path(data.split_file) if data.split_file else Path(cfg.output_dir) / SPLIT_FILE
    if path.exists():
        split = read_split(path)
        check_recorded_split(split, data, path, found[0], found[1])
        drawn = (split.holdout, split.seed, split.group_by or "none")
        asked = (data.holdout, cfg.train.seed, data.group_by or "none")
        if drawn != asked:
            log.warning(
                "%s was drawn with data.holdout=%s, seed %d, data.group_by=%s; it is reused as it is (delete "
                "it, or give another data.split_file, to draw data.holdout=%s, seed %d, data.group_by=%s)",
                path, *drawn, *asked,
            )  # fmt: skip
        log.info("%s, as drawn before in %s", split.summary(), path)
    else:
        split = draw_for(data, *found, cfg.train.seed)
        if is_main:
            split = write_split(split, path)
            pretraining = "reads them too" if data.holdout_in_pretraining else "leaves them out"
            leaves = f"pretraining {pretraining}"
            if data.labeled_root:
                leaves = "the evaluation fits on the rest and scores on them"
            log.info("%s -> %s; %s", split.summary(), path, leaves)
    return dataclasses.replace(data, split_file=str(path))


def _with_stats(data: DataConfig, dataset) -> DataConfig:
    """``data`` fixed to the normalisation, size and channels the run pretrains with (as the evaluation)."""
    stats = data_stats(dataset)
    return dataclasses.replace(
        data,
        img_size=list(stats["img_size"]),
        channels=stats["channels"],
        normalize=[list(stats["mean"]), list(stats["std"])],
        clip=stats.get("clip"),
    )


def pretrain(
    cfg: PretrainConfig,
    records: dict[str, Any] | None = None,
    on_knn: Callable[[int, float], None] | None = None,
) -> Path:
    """Run (or resume) the pretraining described by ``cfg``; returns the run directory.

    ``records``: JSON files written into the run directory once its lock is held (file name -> value),
    e.g. how the recipe was chosen (:mod:`mimkit.recipe`). ``on_knn(epoch, top1)``: hears each online kNN
    score (``online_knn.every``) as it is made; an exception it raises stops the run (a sweep's pruning).
    """
    METHODS.get(cfg.method.get("name"))  # a misspelt name: one line before a run directory exists
    ENCODERS.get(cfg.encoder.get("name"))
    env = dist.setup(cfg.train.device)
    run_dir = Path(cfg.output_dir)
    # one writer per run directory, from before any data is read (a second run stops at once) to its last
    # checkpoint (the trainer re-enters)
    with RunLock(run_dir, enabled=env.is_main):
        _pretrain(cfg, env, run_dir, records or {}, on_knn)
    return run_dir


def _pretrain(
    cfg: PretrainConfig,
    env: dist.DistEnv,
    run_dir: Path,
    records: dict[str, Any],
    on_knn: Callable[[int, float], None] | None,
) -> None:
    seed_everything(cfg.train.seed + env.rank)
    cfg = dataclasses.replace(cfg, data=prepare_split(cfg, env.is_main))
    if env.world_size > 1 and cfg.data.split_file:  # the others read the split file the main process wrote
        torch.distributed.barrier()
    dataset = build_dataset(cfg.data, "pretrain")
    if len(dataset) < cfg.train.batch_size:
        raise ValueError(
            f"the dataset has {len(dataset)} images to pretrain on, fewer than train.batch_size="
            f"{cfg.train.batch_size}: set train.batch_size to at most {len(dataset)}"
        )
    check_labeled_kind(cfg.data, dataset.channels, dataset.decode.dtype, tuple(dataset.img_size))
    cfg = with_data_stats(cfg, data_stats(dataset))  # recorded in the run's config, checked on resume
    method = build_method(cfg, dataset)
    callbacks = []
    if cfg.online_knn.every and cfg.data.source == "shards" and not cfg.data.labeled_root:
        raise ValueError(
            "online_knn needs a labeled test split, which shards do not hold; set online_knn.every=0 or give "
            "a labeled folder with data.labeled_root"
        )
    if cfg.online_knn.every:
        from mimkit.eval.online_knn import OnlineKNN

        bank = dataset  # the labeled training images, never the held-out ones
        if cfg.data.labeled_root or (cfg.data.holdout_in_pretraining and cfg.data.split_file):
            bank = build_dataset(_with_stats(cfg.data, dataset), "train")
        test_set = build_dataset(cfg.data, "test", train_dataset=bank)
        callbacks.append(OnlineKNN(bank, test_set, **dataclasses.asdict(cfg.online_knn), on_score=on_knn))
    if cfg.init_weights and last_checkpoint(run_dir) is None:  # a resumed run has its own weights
        load_weights(method.encoder, resolve_checkpoint(cfg.init_weights), adapt_channels=cfg.adapt_channels)
        log.info("encoder initialised from %s", cfg.init_weights)
    # the run's config records the precision it ran in: "auto" resolved for this machine
    native = auto_to_native(cfg.train.precision, env.device)
    ran = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=native))
    resolved = to_dict(ran)
    resolved["data_stats"] = data_stats(dataset)
    if env.is_main:
        note = f"train.precision {cfg.train.precision} ran as {native} on {env.device}"
        save_config(ran, run_dir / "config.yaml", header=note if cfg.train.precision != native else "")
        for name, value in records.items():  # with the config, once the data are known good; whole or not
            aside = run_dir / f".{name}.tmp-{os.getpid()}"
            aside.write_text(json.dumps(value, indent=1) + "\n")
            os.replace(aside, run_dir / name)
        n_params = sum(p.numel() for p in method.parameters()) / 1e6
        skipped = f", {dataset.skipped} unreadable skipped" if dataset.skipped else ""
        log.info(
            "pretraining %s on %s (%d images%s) with %s (%.1fM parameters) -> %s", cfg.method["name"],
            cfg.data.source, len(dataset), skipped, cfg.encoder["name"], n_params, run_dir,
        )  # fmt: skip
    build_trainer(cfg, dataset, method, run_dir, config=resolved, callbacks=callbacks).fit()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory means its last checkpoint (a transformers / timm model directory: itself)."""
    path = Path(path)
    if is_model_dir(path):
        return path
    if path.is_dir():
        found = last_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"run directory {str(path)!r} has no checkpoint ({path / 'last.pt'})")
        return found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path


def load_pretrained(path: str | os.PathLike) -> tuple[nn.Module, PretrainConfig, dict[str, Any]]:
    """Rebuild a method from a mimkit checkpoint (or run directory) and load its weights.

    Returns:
        ``(method, config, data_stats)`` where data_stats holds the normalisation of the training data.
    """
    path = resolve_checkpoint(path)
    raw = read_checkpoint(path)
    config = raw.get("config")
    if not isinstance(config, dict) or "method" not in config:
        raise ValueError(
            f"{path} is not a mimkit pretraining checkpoint (it has no training config); "
            "for an encoder-only file pass --encoder NAME to build the model it fits"
        )
    stats = config.get("data_stats", {})
    cfg = _build(PretrainConfig, {k: v for k, v in config.items() if k != "data_stats"}, "")
    moved = path.parent / SPLIT_FILE  # a run directory moved, or read from another working directory
    if cfg.data.split_file and not Path(cfg.data.split_file).exists() and moved.is_file():
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split_file=str(moved)))
    method = build_method(cfg, stats=stats)
    load_weights(method, raw)
    return method, cfg, stats


def open_model(path: str | os.PathLike) -> nn.Module:
    """The model at ``path``: a :meth:`~mimkit.hub.Pretrained.save_pretrained` directory (built from its
    config by the factories, loaded strictly) or the method of a run directory or training checkpoint
    (:func:`load_pretrained`). What ``from_pretrained`` reads with (``mimkit/__init__.py`` hands it over)."""
    path = Path(path)
    if not is_model_dir(path):  # no config.json and model.safetensors: a run directory or a checkpoint
        return load_pretrained(path)[0]
    config = json.loads((path / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a mimkit save_pretrained directory (no {FORMAT!r} in config.json)")
    model = create_encoder(**config["encoder"])
    if "method" in config:
        model = create_method(**config["method"], encoder=model)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    return model
