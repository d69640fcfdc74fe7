"""Full and partial fine-tuning of a pretrained encoder, through the one trainer (as MAE, He et al., 2021).

The classifier is the encoder itself built with its family's ``CLASSIFIER_OPTIONS`` and a ``head``: a ViT
as MAE's fine-tuning model (``[N, C, H, W] -> mean of the patch tokens -> fc_norm -> head``, the final
per-token ``norm`` replaced by ``fc_norm``, so the pretrained ``norm`` is not used), a Swin as SimMIM's
(final ``norm`` -> mean of the tokens -> head). It is loaded with the pretrained weights; only ``fc_norm``
and ``head`` start fresh (head weights ~ N(0, 2e-5), truncated). It trains with:

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mimkit.data.config import check_range_pair, size_pair
from mimkit.data.loader import build_loader
from mimkit.data.transforms import EvalTransform, FinetuneAugment
from mimkit.engine import dist
from mimkit.engine.config import TrainConfig
from mimkit.engine.trainer import Trainer
from mimkit.eval.classifier import Classifier
from mimkit.eval.records import check_recipe, final_train_loss
from mimkit.plain import plain

log = logging.getLogger("mimkit")


def _finetune_train() -> TrainConfig:
    # MAE's fine-tuning recipe (AdamW betas 0.9 / 0.999, wd 0.05, 5 warm-up epochs, min lr 1e-6); blr 1e-3
    # is MAE's for ViT-L/H (5e-4 for ViT-B), a better start for the small encoders of small datasets.
    return TrainConfig(
        epochs=50, blr=1e-3, betas=[0.9, 0.999], warmup_epochs=5, min_lr=1e-6, weight_decay=0.05
    )


@dataclass
class FinetuneConfig:
    """A fine-tuning recipe; the defaults are MAE's (docs/methods.md, "Evaluation protocols").

    Attributes:
        train: optimisation and bookkeeping (epochs, blr, batch size, precision, ...).
        layer_decay: layer-wise lr decay factor (0.65 ViT-B, 0.75 ViT-L); 1 = none.
        drop_path: stochastic depth rate of the last block.
        smoothing: label smoothing of the targets.
        mixup, cutmix: Beta(alpha, alpha) parameters; 0 turns either off.
        mix_prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix rather than MixUp when both are on.
        randaug_n, randaug_m: RandAugment operations per batch and magnitude (0-30); n = 0 turns it off.
        reprob: random erasing probability per image.
        crop_scale: RandomResizedCrop area range.
        hflip: random horizontal flips.
        train_blocks: partial fine-tuning: train only the last ``k`` blocks and what sits above them
            (final norm, fc_norm, head); 0 = head only; None = everything (full fine-tuning).
        img_size: fine-tune at another input size (position embeddings resampled bicubically); None keeps
            the data's size.
        eval_batch_size: batch size of the test-set evaluation.
    """

    train: TrainConfig = field(default_factory=_finetune_train)
    layer_decay: float = 0.75
    drop_path: float = 0.1
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    randaug_n: int = 2
    randaug_m: int = 9
    reprob: float = 0.25
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    hflip: bool = True
    train_blocks: int | None = None
    img_size: int | list[int] | None = None
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} (a Beta alpha) must be >= 0 (0 = off), got {getattr(self, name)!r}")
        for name in ("mix_prob", "switch_prob", "reprob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not isinstance(self.randaug_n, int) or self.randaug_n < 0:
            raise ValueError(f"randaug_n must be an int >= 0 (0 = off), got {self.randaug_n!r}")
        if not 0 < self.randaug_m < 30:
            raise ValueError(f"randaug_m must be in (0, 30), got {self.randaug_m!r}")
        check_range_pair(self.crop_scale, "crop_scale", 0.0, 1.0)
        if self.train_blocks is not None and (
            not isinstance(self.train_blocks, int) or self.train_blocks < 0
        ):
            raise ValueError(
                f"train_blocks must be an int >= 0 (0 = head only) or None (all), got {self.train_blocks!r}"
            )
        if self.img_size is not None:
            size_pair(self.img_size, "img_size")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive int, got {self.eval_batch_size!r}")


# ----------------------------------------------------------------------------- running


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
    train_cfg = cfg.train if batch == cfg.train.batch_size else _replace_train(cfg.train, batch_size=batch)
    loader = build_loader(
        train_set,
        batch,
        shuffle=True,
        drop_last=True,
        seed=train_cfg.seed,
        rank=env.rank,
        world_size=env.world_size,
        pin_memory=env.device.type == "cuda",
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
    transform = EvalTransform(img_size, test_set.mean, test_set.std).to(env.device)
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
    log.info(
        "fine-tuned %d steps on %d images: test top-1 %.2f%%",
        trainer.step,
        len(train_set),
        result["test_top1"],
    )
    return result


def _replace_train(train: TrainConfig, **changes: Any) -> TrainConfig:
    from dataclasses import replace

    return replace(train, **changes)
