"""Full and partial fine-tuning of a pretrained encoder, through the one trainer (as MAE, He et al., 2021).

The classifier (:mod:`mimkit.eval.classifier`) starts from the pretrained weights, with a fresh
``fc_norm`` and ``head``, and trains with:

- layer-wise lr decay: parameter at depth ``layer_id`` gets ``lr * decay ** (num_layers - layer_id)``,
  ``num_layers = depth + 1`` (patch embedding / tokens at 0, block ``i`` at ``i + 1``, norms and head at
  ``depth + 1``: scale 1), handed to :class:`~mimkit.engine.Trainer` as ``layer_scale``;
- drop path (stochastic depth, rising linearly over the blocks), label smoothing, MixUp / CutMix;
- RandomResizedCrop + flip, RandAugment (kornia) and random erasing (kornia) on the batch, on the device;
- partial fine-tuning: everything but the last ``k`` blocks (and what sits above them) frozen.
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
from mimkit.engine import dist
from mimkit.engine.trainer import Trainer
from mimkit.eval.classifier import Classifier
from mimkit.eval.recipe import FinetuneConfig
from mimkit.eval.records import check_recipe, final_train_loss
from mimkit.eval.saved import write_classifier_record
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

    The run lives in ``run_dir`` (``last.pt``, ``metrics.jsonl``, ``finetune.json``) and resumes from its
    last checkpoint like any training run; a finished run is only re-evaluated.

    Args:
        classifier: from :func:`build_classifier`.
        train_set, test_set: labeled :class:`~mimkit.data.ImageDataset` splits (uint8 images).
        cfg: the recipe.
        run_dir: where the run lives.
        config: stored in the checkpoints; its ``encoder`` entry (and the ``method`` entry written here)
            must match for a run to resume.

    Returns:
        ``{"test_top1": %, "steps", "epochs", "train_images", "test_images", "trainable_params",
        "final_train_loss", "chance_loss"}``: the training loss logged over the last tenth of the steps
        (None if nothing was logged) and ``ln(classes)``, the loss of a uniform prediction; see
        :func:`~mimkit.eval.records.at_chance`.
    """
    for split, data in (("training", train_set), ("test", test_set)):
        if getattr(data, "num_classes", 0) == 0:
            raise ValueError(
                f"fine-tuning needs labeled data; the {split} split at "
                f"{getattr(data, 'root', '?')!r} has no class labels"
            )
    env = dist.setup(cfg.train.device)
    batch = min(cfg.train.batch_size, len(train_set) // env.world_size)
    if batch < 1:
        raise ValueError(
            f"the training split has {len(train_set)} images: too few for {env.world_size} processes"
        )
    train_cfg = cfg.train if batch == cfg.train.batch_size else replace(cfg.train, batch_size=batch)
    loader = process_loader(train_set, batch, env, shuffle=True, drop_last=True, seed=train_cfg.seed)
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
    trainer = Trainer(
        classifier,
        loader,
        train_cfg,
        run_dir,
        batch_transform=augment,
        env=env,
        config=run_config,
        identity=identity,
        extras={"grid_size": list(classifier.encoder.grid_size)},
        layer_scale=classifier.layer_scale,
    )
    trainer.fit()
    test_loader = build_loader(
        test_set, min(cfg.eval_batch_size, len(test_set)), shuffle=False, drop_last=False
    )
    transform = build_eval_transform(test_set, img_size).to(env.device)
    result = {
        "test_top1": classifier.accuracy(test_loader, transform, env.device),
        "steps": trainer.step,
        "epochs": trainer.epoch,
        "train_images": len(train_set),
        "test_images": len(test_set),
        "trainable_params": sum(p.numel() for p in classifier.parameters() if p.requires_grad),
        "final_train_loss": final_train_loss(run_dir),
        "chance_loss": math.log(train_set.num_classes),
    }
    if env.is_main:
        Path(run_dir, "finetune.json").write_text(json.dumps(result, indent=2) + "\n")
        # the classifier kept with its class names and preprocessing, for mimkit predict / export
        write_classifier_record(run_dir, classifier, train_set, result)
    log.info(
        "fine-tuned %d steps on %d images: test top-1 %.2f%%",
        trainer.step,
        len(train_set),
        result["test_top1"],
    )
    return result
