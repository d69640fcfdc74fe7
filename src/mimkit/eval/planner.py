"""A fine-tuning recipe chosen from the labeled set and the encoder, as the pretraining recipe is chosen
from the folder (``mimkit.recipe``): facts first (:class:`LabeledSet`, :class:`EncoderShape`), then a
plan of config values each with its reason (:func:`plan_finetune`), printed as a ``key value why`` table
and recorded in the run (``plan.json``); every value is a key of
:class:`~mimkit.eval.recipe.FinetuneConfig`, and a ``key=value`` the user gives wins over the plan.

ImageNet's recipe (MixUp 0.8 + CutMix 1.0, RandAugment 2/9, erasing 0.25, crops down to 8%, 100 epochs
of 1.28M images) is made for a thousand images per class seen a hundred times; a few hundred images
seen for a few minutes of a CPU learn nothing through it (issue 33: 40% where the frozen probe of the
same encoder reached 90%). The plan scales the regularisation with the images per class, the steps and
the lr with the set and the batch, and the layer decay with the encoder's depth. The thresholds were
measured (docs/evaluation.md, "Small labeled sets").
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.choices import Choice, as_overrides, flatten, table
from mimkit.data.datasets import ImageDataset
from mimkit.engine.config import _build, merge, parse_overrides, to_dict
from mimkit.eval.recipe import FinetuneConfig
from mimkit.models import create_encoder

log = logging.getLogger("mimkit")

PLAN_RECORD = "plan.json"  # in the fine-tuning run: the facts and each choice with its reason
HOLDOUT = 0.1  # of each class, to choose the checkpoint (at least 1 image: classes of 2 or more)
MIN_STEPS_PER_EPOCH = 8  # the batch is halved (down to MIN_BATCH) until an epoch has this many steps
MIN_BATCH, MAX_BATCH = 8, 256
# on a CPU the budget buys images, not steps (a step's time grows with its batch): batches of 32 make four
# times the updates of 128 in the same minutes (measured: 2,000 photo crops, 3 minutes: 135 steps of 128
# reached 79.8% against the probe's 95.8%)
CPU_MAX_BATCH = 32
TARGET_STEPS = 1000  # optimizer steps the schedule aims at (the budget may compress it)
MIN_EPOCHS, MAX_EPOCHS = 3, 200
LR_256 = 2e-3  # peak lr at batch 256 (the Fashion-MNIST report's held-out choice for ViT-Tiny, blr 2e-3)
DECAY_12 = 0.75  # layer decay of a 12-block encoder: its patch embedding gets 0.75 ** 13 = 2.4% of the lr
CPU_MINUTES = 10.0  # the default fine-tuning budget on a CPU (none on a GPU)
# images per class from which the plan regularises more on a GPU (below: a small set learns through light
# augmentation only). On a CPU the budget is minutes: light augmentation at every size (measured: 1,998
# grey texture crops, 3 minutes, RandAugment 1/5 + drop path 0.1: training loss 1.36 after 589 steps and
# 80.7% test, under the probe's 92.9%; 495 of them without: loss 0.63, 93.8% against 86.4%)
SOME_PER_CLASS, MANY_PER_CLASS = 100, 1000
FEW_PER_CLASS = 5  # fewer images than this in a class: the score says little, and the plan says so


@dataclass(frozen=True)
class LabeledSet:
    """Facts of a labeled training set, as fine-tuning sees it (recorded in ``plan.json``).

    Attributes:
        images: labeled training images (the held-out part is taken from them).
        classes: classes with at least one image.
        smallest, median: images of the smallest class, and per class at the median.
        height, width: the size the images are read at.
        channels: bands.
    """

    images: int
    classes: int
    smallest: int
    median: float
    height: int
    width: int
    channels: int

    @classmethod
    def of(cls, dataset: ImageDataset) -> LabeledSet:
        labels = dataset.labels[dataset.labels >= 0]
        counts = [int(n) for n in torch.bincount(labels, minlength=dataset.num_classes).tolist() if n > 0]
        if not counts:
            raise ValueError(f"fine-tuning needs labeled images; {dataset.root!r} has none")
        height, width = dataset.img_size
        return cls(
            len(labels), len(counts), min(counts), float(statistics.median(counts)), height, width,
            dataset.channels,
        )  # fmt: skip


@dataclass(frozen=True)
class EncoderShape:
    """What the plan reads of the encoder: its name, blocks and width."""

    name: str
    depth: int
    width: int

    @classmethod
    def of(cls, encoder_cfg: dict[str, Any], module: nn.Module | None = None) -> EncoderShape:
        """From a loaded encoder, else one built from its config (as the classifier will be)."""
        if module is None:
            options = {k: v for k, v in encoder_cfg.items() if k not in ("name", "init")}
            module = create_encoder(encoder_cfg["name"], **options)
        width = getattr(module, "embed_dim", None) or getattr(module, "num_features", 0)
        return cls(encoder_cfg["name"], int(module.depth), int(width))


def _batch(images: int, device: str) -> tuple[int, str]:
    top = MAX_BATCH if device == "cuda" else CPU_MAX_BATCH
    batch = top
    while batch > MIN_BATCH and images // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    if batch == MAX_BATCH:
        return batch, "MAE's fine-tuning batch per process"
    if batch == top:
        return batch, "on a CPU the budget buys images: small batches make more updates of them"
    return batch, f"{images:,} images to train on: at least {MIN_STEPS_PER_EPOCH} steps per epoch"


def _regularisation(facts: LabeledSet, device: str) -> list[Choice]:
    """Augmentation, mixing, smoothing and drop path by the images per class and the device's budget."""
    per_class = facts.median
    if device == "cuda" and per_class >= MANY_PER_CLASS:
        why = f"{per_class:,.0f} images per class and a GPU's budget: MAE's ImageNet recipe"
        values = dict(mixup=0.8, cutmix=1.0, randaug_n=2, randaug_m=9, reprob=0.25, crop_scale=[0.08, 1.0])
        values.update(smoothing=0.1, drop_path=0.1)
    elif device == "cuda" and per_class >= SOME_PER_CLASS:
        why = f"{per_class:,.0f} images per class on a GPU: light augmentation, no mixing"
        values = dict(mixup=0.0, cutmix=0.0, randaug_n=1, randaug_m=5, reprob=0.0, crop_scale=[0.5, 1.0])
        values.update(smoothing=0.1, drop_path=0.1)
    else:
        few = f"{per_class:,.0f} images per class" + (
            f" (under {SOME_PER_CLASS})" if per_class < SOME_PER_CLASS else " in a CPU's minutes"
        )
        why = (
            f"{few}: mixing, strong augmentation and stochastic depth slow a short schedule down; crops, "
            "flips, light smoothing"
        )
        values = dict(mixup=0.0, cutmix=0.0, randaug_n=0, reprob=0.0, crop_scale=[0.5, 1.0], smoothing=0.1)
        values.update(drop_path=0.0)
    first = next(iter(values))
    return [Choice(k, v, why if k == first else f"see {first}") for k, v in values.items()]


def plan_finetune(
    facts: LabeledSet,
    encoder: EncoderShape,
    device: str = "cpu",
    given: dict[str, Any] | None = None,
    processes: int = 1,
) -> list[Choice]:
    """The fine-tuning settings for ``facts`` and ``encoder``, each with its reason.

    ``given``: values the user set (flat dotted keys); the choices that follow from them use them (the
    epochs from the batch given, no planned ``train.lr`` over a ``train.blr`` given). ``processes``: under
    torchrun, ``train.batch_size`` is per process; the steps and the lr follow the batch of a step, all
    processes together, so 2 processes x 8 plan as 1 x 16.
    """
    given = given or {}
    choices = []
    if facts.smallest >= 2:
        holdout, why = HOLDOUT, "of each class (at least 1) to choose the checkpoint on; never the test set"
    else:
        holdout, why = 0.0, "a class has 1 image: nothing to hold out, the last weights are kept"
    choices.append(Choice("holdout", holdout, why))
    holdout = given.get("holdout", holdout)
    held = round(holdout * facts.images) if holdout else 0
    fit = max(1, facts.images - max(held, facts.classes if holdout else 0))
    batch, why_batch = _batch(fit, device)
    choices.append(Choice("train.batch_size", batch, why_batch))
    batch = min(given.get("train.batch_size", batch) * processes, fit)
    steps_per_epoch = max(1, fit // batch)
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    choices.append(
        Choice(
            "train.epochs",
            epochs,
            f"about {TARGET_STEPS} steps of {batch} ({steps_per_epoch} per epoch), within "
            f"{MIN_EPOCHS}-{MAX_EPOCHS} epochs",
        )
    )
    epochs = given.get("train.epochs", epochs)
    choices.append(Choice("train.warmup_epochs", round(epochs / 10, 1), "a tenth of the schedule"))
    if "train.blr" not in given:
        lr = LR_256 * math.sqrt(batch / 256)
        choices.append(
            Choice(
                "train.lr",
                float(f"{lr:.3g}"),
                f"{LR_256:g} at batch 256, square-root scaled to {batch} (AdamW's step does not grow "
                "with the batch: a linear scaling starves small batches)",
            )
        )
    decay = DECAY_12 ** (13 / (encoder.depth + 1))  # decay ** (depth + 1): the patch embedding's share
    choices.append(
        Choice(
            "layer_decay",
            round(decay, 3),
            f"{encoder.depth} blocks: the patch embedding gets {DECAY_12**13:.1%} of the lr, as with "
            f"{DECAY_12} over 12",
        )
    )
    choices += _regularisation(facts, device)
    budget = CPU_MINUTES if device == "cpu" else None
    choices.append(
        Choice(
            "train.max_minutes",
            budget,
            "the default budget on a CPU: the schedule fits it" if budget else "no cap on a GPU",
        )
    )
    return choices


def choose_finetune(
    dataset: ImageDataset,
    encoder: EncoderShape,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
) -> tuple[FinetuneConfig, dict[str, Any]]:
    """The planned recipe for fine-tuning on ``dataset`` with the user's ``key=value`` overrides on top,
    and the record of how it was chosen (``{"facts", "encoder", "device", "choices", "given"}``)."""
    given = parse_overrides(list(overrides))
    flat = flatten(given)
    facts = LabeledSet.of(dataset)
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # as torchrun sets it (mimkit.engine.dist.setup)
    choices = plan_finetune(facts, encoder, device, flat, processes)
    cfg = _build(FinetuneConfig, merge(merge(to_dict(FinetuneConfig()), as_overrides(choices)), given), "")
    small = few_images_note(facts)
    log.info(
        "fine-tuning recipe for %d images in %d classes (override any value with --set KEY=VALUE):\n%s%s",
        facts.images,
        facts.classes,
        table(choices, flat),
        f"\n{small}" if small else "",
    )
    record = {
        "facts": asdict(facts),
        "encoder": asdict(encoder),
        "device": device,
        "choices": [asdict(c) for c in choices],
        "given": flat,
    }
    return cfg, record


def few_images_note(facts: LabeledSet) -> str | None:
    """A line when a class has fewer than :data:`FEW_PER_CLASS` images, else None."""
    if facts.smallest >= FEW_PER_CLASS:
        return None
    return (
        f"the smallest class has {facts.smallest} image(s), under {FEW_PER_CLASS}: the fine-tuned score "
        "says little of the encoder"
        + ("" if facts.smallest >= 2 else ", and nothing can be held out to choose the checkpoint")
    )


def write_plan(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """``run_dir/plan.json``: the facts and the choices the run's recipe came from."""
    path = Path(run_dir, PLAN_RECORD)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path
