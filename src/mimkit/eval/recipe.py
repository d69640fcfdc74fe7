"""The fine-tuning recipe, below the classifier, the run records and the loop that read it; overrides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from mimkit.data.config import check_range_pair, size_pair
from mimkit.engine.config import TrainConfig, _build, merge, parse_overrides, to_dict

T = TypeVar("T")


def load_recipe(cls: type[T], overrides: Sequence[str] = ()) -> T:
    """A recipe dataclass from its defaults and ``key.sub=value`` overrides (unknown keys are errors)."""
    return _build(cls, merge(to_dict(cls()), parse_overrides(list(overrides))), "")


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
        holdout: fraction of each class of the *training* images held out to choose the checkpoint
            (``best.pt``, scored at each epoch end; at least 1 image per class); 0 = none (the last
            weights are kept). Never more than half a class.
        holdout_max: at most this many images of a class are held out.
        compare_probe: also train the linear probe of the starting encoder on the same images, scored on
            the same held-out and test images (:mod:`mimkit.eval.selection`).
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
    holdout: float = 0.1
    holdout_max: int = 100
    compare_probe: bool = True

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
        number = isinstance(self.holdout, (int, float)) and not isinstance(self.holdout, bool)
        if not number or not 0 <= self.holdout <= 0.5:
            raise ValueError(f"holdout must be a fraction in [0, 0.5] (0 = none), got {self.holdout!r}")
        if not isinstance(self.holdout_max, int) or self.holdout_max < 1:
            raise ValueError(f"holdout_max must be an int >= 1 (images per class), got {self.holdout_max!r}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive int, got {self.eval_batch_size!r}")
