"""Full and partial fine-tuning of a pretrained encoder, through the one trainer (as MAE, He et al., 2021).

The classifier (:mod:`mimkit.eval.classifier`) starts from the pretrained weights, with a fresh
``fc_norm`` and ``head``, and trains with:

- layer-wise lr decay: parameter at depth ``layer_id`` gets ``lr * decay ** (num_layers - layer_id)``,
  ``num_layers = depth + 1`` (patch embedding / tokens at 0, block ``i`` at ``i + 1``, norms and head at
  ``depth + 1``: scale 1), handed to :class:`~mimkit.engine.Trainer` as ``layer_scale``;
- drop path (stochastic depth, rising linearly over the blocks), label smoothing, MixUp / CutMix;
- RandomResizedCrop + flip, RandAugment (kornia) and random erasing (kornia) on the batch, on the device;
- partial fine-tuning: everything but the last ``k`` blocks (and what sits above them) frozen;
- a held-out part of the training labels scored at each epoch end, the best checkpoint kept by it
  (``best.pt``), and the linear probe of the starting encoder scored beside it (:mod:`mimkit.eval.selection`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mimkit.data.loader import build_loader, process_loader
from mimkit.data.transforms import FinetuneAugment, build_eval_transform
from mimkit.engine import checkpoint as ckpt
from mimkit.engine import dist
from mimkit.engine.config import TrainConfig
from mimkit.engine.precision import auto_to_native
from mimkit.engine.trainer import Trainer
from mimkit.eval.classifier import Classifier
from mimkit.eval.evaluation_record import data_fingerprint, write_evaluation
from mimkit.eval.features import FeaturePass
from mimkit.eval.linear import LinearProbeConfig
from mimkit.eval.recipe import FinetuneConfig
from mimkit.eval.records import chance_level, check_recipe, final_train_loss
from mimkit.eval.saved import write_classifier_record
from mimkit.eval.selection import (
    PROBE_RECORD,
    BestOnHeldOut,
    below_probe_note,
    holdout_parts,
    probe_baseline,
    summary,
)
from mimkit.plain import plain

log = logging.getLogger("mimkit")


def finetune(
    classifier: Classifier,
    train_set,
    test_set,
    cfg: FinetuneConfig,
    run_dir: str | os.PathLike,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``classifier`` on ``train_set`` with the one trainer, then score it on ``test_set``.

    ``cfg.holdout`` of each class of ``train_set`` is held out (never the test set): the classifier is
    scored on it at each epoch end and the best epoch's weights (``best.pt``) are the ones tested. With
    ``cfg.compare_probe``, the linear probe of the classifier's encoder as it starts (frozen, mean-pooled
    features; the same fit part) is scored on the same held-out and test images, and a run that ends below
    it says so in one line, with the fixes.

    The run lives in ``run_dir`` (``last.pt``, ``best.pt``, ``metrics.jsonl``, ``finetune.json``,
    ``probe.json``) and resumes from its last checkpoint like any training run; a finished run is only
    re-evaluated. A batch larger than the images to train on is cut to them, in one line (the lr follows the
    batch: ``blr * batch / 256``), rather than refused: the run is still the one asked for, on fewer images.

    Args:
        classifier: from :func:`build_classifier`.
        train_set, test_set: labeled :class:`~mimkit.data.ImageDataset` splits (uint8 images).
        cfg: the recipe.
        run_dir: where the run lives.
        config: stored in the checkpoints; its ``encoder`` entry (and the ``method`` entry written here)
            must match for a run to resume. Its ``encoder.init`` (or ``evaluated``: the row's name, e.g.
            ``"teacher"``) and ``label_fraction`` name the run in its ``evaluation.json``
            (:mod:`mimkit.eval.evaluation_record`).

    Returns:
        ``{"test_top1": %, "holdout_top1": % or None, "best_epoch", "probe": {"holdout_top1", "test_top1",
        "blr", ...} or None, "below_probe": bool, "steps", "epochs", "train_images", "fit_images",
        "holdout_images", "test_images", "trainable_params", "final_train_loss", "chance_loss", "chance"}``:
        the training loss logged over the last tenth of the steps (None if nothing was logged) and
        ``ln(classes)``, the loss of a uniform prediction (see :func:`~mimkit.eval.records.at_chance`), and
        the test set's :func:`~mimkit.eval.records.chance_level`.
    """
    for split, data in (("training", train_set), ("test", test_set)):
        if getattr(data, "num_classes", 0) == 0:
            raise ValueError(
                f"fine-tuning needs labeled data; the {split} split at "
                f"{getattr(data, 'root', '?')!r} has no class labels"
            )
    env = dist.setup(cfg.train.device)
    fit_set, held_set = holdout_parts(train_set, cfg.holdout, cfg.holdout_max, cfg.train.seed)
    train_cfg = fitted_batch(cfg.train, len(fit_set), env.world_size)
    loader = process_loader(
        fit_set, train_cfg.batch_size, env, shuffle=True, drop_last=True, seed=train_cfg.seed
    )
    img_size = tuple(classifier.encoder.img_size)
    augment = FinetuneAugment(
        img_size,
        train_set.mean,
        train_set.std,
        cfg.crop_scale,
        cfg.hflip,
        cfg.randaug_n,
        cfg.randaug_m,
        cfg.reprob,
    ).to(env.device)
    # recipe.json keeps a changed recipe from resuming (or reporting) a run made with another; the
    # identity keeps a run of one label fraction (number of training images) from resuming another's.
    check_recipe(run_dir, cfg, write=env.is_main)
    method = {"name": "finetune", "train_blocks": cfg.train_blocks, "train_images": len(train_set)}
    run_config = plain({"finetune": asdict(cfg), **(config or {}), "method": method})
    identity = {key: run_config[key] for key in ("encoder", "method") if key in run_config}
    extras = {"grid_size": list(classifier.encoder.grid_size)}
    transform = build_eval_transform(test_set, img_size).to(env.device)
    resuming = cfg.train.resume and ckpt.last_checkpoint(run_dir) is not None
    probe = None  # a run begun before the comparison existed has no record of its starting encoder
    if cfg.compare_probe and (not resuming or Path(run_dir, PROBE_RECORD).is_file()):
        precision = auto_to_native(cfg.train.precision, env.device)
        run = FeaturePass(env.device, precision, cfg.eval_batch_size, None, env.rank, env.world_size)
        probe_cfg = LinearProbeConfig(device=cfg.train.device, seed=cfg.train.seed)
        probe = probe_baseline(classifier.encoder, fit_set, held_set, test_set, run_dir, run, probe_cfg)
    selector = None
    if held_set is not None and train_cfg.strategy == "fsdp" and env.distributed:
        log.warning("held-out checkpoint choice is off under train.strategy=fsdp: the last weights are kept")
    elif held_set is not None:
        record = {"config": run_config, "identity": identity, **extras}
        selector = BestOnHeldOut(
            held_set, transform, env.device, run_dir, record, cfg.train.resume, env.is_main
        )
    trainer = Trainer(
        classifier,
        loader,
        train_cfg,
        run_dir,
        batch_transform=augment,
        env=env,
        config=run_config,
        identity=identity,
        extras=extras,
        layer_scale=classifier.layer_scale,
        callbacks=[selector] if selector is not None else [],
    )
    trainer.fit()
    kept = selector is not None and selector.restore(classifier)  # the best epoch's weights
    test_loader = build_loader(
        test_set, min(cfg.eval_batch_size, len(test_set)), shuffle=False, drop_last=False
    )
    result = {
        "test_top1": classifier.accuracy(test_loader, transform, env.device),
        "holdout_top1": selector.best_top1 if kept else None,
        "best_epoch": selector.best_epoch if kept else None,
        "probe": probe,
        "steps": trainer.step,
        "epochs": trainer.epoch,
        "train_images": len(train_set),
        "fit_images": len(fit_set),
        "holdout_images": 0 if held_set is None else len(held_set),
        "test_images": len(test_set),
        "trainable_params": sum(p.numel() for p in classifier.parameters() if p.requires_grad),
        "final_train_loss": final_train_loss(run_dir),
        "chance_loss": math.log(train_set.num_classes),
        "chance": chance_level(test_set.labels),
    }
    note = below_probe_note(result)
    result["below_probe"] = note is not None
    if env.is_main:
        Path(run_dir, "finetune.json").write_text(json.dumps(result, indent=2) + "\n")
        # the classifier kept with its class names and preprocessing, for mimkit predict / export
        write_classifier_record(run_dir, classifier, train_set, result)
        given = config or {}  # how the caller names the encoder and the label fraction (1: all labels)
        write_evaluation(
            run_dir,
            protocol="finetune",
            encoder=given.get("evaluated") or given.get("encoder", {}).get("init") or "pretrained",
            variant={"label_fraction": given.get("label_fraction", 1.0), "train_blocks": cfg.train_blocks},
            settings=cfg,
            data=data_fingerprint(train_set, test_set),
            scores={"top1": result["test_top1"]},
        )
    log.info("fine-tuned %d steps on %d images: %s", trainer.step, len(fit_set), summary(result))
    if note is not None:
        log.warning(note)
    return result


def fitted_batch(train: TrainConfig, images: int, world_size: int) -> TrainConfig:
    """``train`` with its batch cut to the images each process has (said in one line when it is)."""
    batch = min(train.batch_size, images // world_size)
    if batch < 1:
        raise ValueError(f"the training split has {images} images: too few for {world_size} processes")
    if batch == train.batch_size:
        return train
    log.warning(
        "train.batch_size=%d is more than the %d images to fine-tune on (per process): cut to %d, one step "
        "per epoch (the lr follows: blr x %d / 256)",
        train.batch_size,
        images,
        batch,
        batch * world_size,
    )
    return replace(train, batch_size=batch)
