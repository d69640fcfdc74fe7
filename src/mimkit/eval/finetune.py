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

MixUp / CutMix are written here (:class:`MixUpCutMix`, thirty lines) rather than taken from kornia:
kornia's ``RandomMixUpV2`` draws the mixing weight uniformly instead of from ``Beta(alpha, alpha)``, its
``RandomCutMixV2`` still defaults to an area-inconsistent weight, and both return ``(y_a, y_b, lam)``
triples that would have to be turned into smoothed soft targets anyway.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mimkit.data.config import check_range_pair, size_pair
from mimkit.data.loader import build_loader
from mimkit.data.transforms import EvalTransform, crop_resize, random_resized_crop_boxes
from mimkit.engine import checkpoint as ckpt
from mimkit.engine import dist
from mimkit.engine.config import TrainConfig
from mimkit.engine.trainer import Trainer
from mimkit.weights import load_weights

log = logging.getLogger("mimkit")

_FRESH = ("fc_norm.", "head.")  # the classifier's own parameters: never taken from a pretrained encoder


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


# ----------------------------------------------------------------------------- targets


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``[N]`` int -> ``[N, num_classes]``: ``1 - smoothing + smoothing / C`` on the label, ``smoothing / C``
    elsewhere (each row sums to 1)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


class MixUpCutMix:
    """MixUp (Zhang et al., 2018) or CutMix (Yun et al., 2019) of a batch with its reverse, with soft targets.

    One weight ``lam ~ Beta(alpha, alpha)`` per batch (timm's "batch" mode): MixUp blends the images,
    CutMix pastes a box of ``1 - lam`` of the area from the reversed batch, and ``lam`` is then corrected
    to the box's actual area after clipping. Targets: ``lam * t + (1 - lam) * t.flip(0)`` with ``t`` the
    smoothed one-hot labels. Random numbers come from the global CPU torch RNG (saved in checkpoints by
    the trainer) and stay on the host: no device sync per batch.

    Args:
        num_classes: classes of the targets.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 turns that mix off.
        prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix when both are on.
        smoothing: label smoothing of the targets.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        smoothing: float = 0.1,
    ):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.smoothing = smoothing

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @staticmethod
    def _beta(alpha: float) -> float:
        a = torch.tensor(float(alpha))
        return float(torch.distributions.Beta(a, a).sample())

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [N, C, H, W]``, ``labels [N]`` -> mixed images, soft targets ``[N, classes]``."""
        targets = smooth_one_hot(labels, self.num_classes, self.smoothing)
        if not self.active or float(torch.rand(())) >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or float(torch.rand(())) < self.switch_prob
        )
        if use_cutmix:
            lam = self._beta(self.cutmix_alpha)
            height, width = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(height * cut), int(width * cut)
            cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        else:
            lam = self._beta(self.mixup_alpha)
            images = images * lam + images.flip(0) * (1.0 - lam)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)


# ----------------------------------------------------------------------------- augmentation

# kornia's default RandAugment candidates; "color" (saturation) needs RGB and is left out for other images.
_COLOR_OPS = ("color",)


class FinetuneAugment(nn.Module):
    """The fine-tuning augmentation of a whole batch, on its device.

    ``uint8 [N, C, H, W]`` -> RandomResizedCrop (bicubic, ``crop_scale``, ratio 3/4-4/3) + flip -> RandAugment
    (kornia; the ``n`` operations are drawn per batch, their magnitude sign per image) -> ``(x - mean) / std``
    -> random erasing (kornia; erased boxes are filled with 0, the mean, where timm fills with noise)
    -> float32 ``[N, C, *img_size]``.
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: Sequence[float] = (0.08, 1.0),
        hflip: bool = True,
        randaug_n: int = 2,
        randaug_m: int = 9,
        reprob: float = 0.25,
    ):
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment
        from kornia.augmentation.auto.rand_augment.rand_augment import default_policy

        self.img_size = size_pair(img_size, "img_size")
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.scale = check_range_pair(list(crop_scale), "crop_scale", 0.0, 1.0)
        self.ratio = (3 / 4, 4 / 3)
        self.hflip = hflip
        self.randaug = None
        if randaug_n > 0:
            channels = self.mean.shape[1]
            policy = [p for p in default_policy if channels == 3 or p[0][0] not in _COLOR_OPS]
            self.randaug = RandAugment(n=min(randaug_n, len(policy)), m=randaug_m, policy=policy)
        self.erase = K.RandomErasing(p=reprob, value=0.0) if reprob > 0 else None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        n, _, height, width = x.shape
        boxes = random_resized_crop_boxes(n, height, width, self.scale, self.ratio, device=x.device)
        flip = torch.rand(n, device=x.device) < 0.5 if self.hflip else None
        x = crop_resize(x, boxes, self.img_size, flip).clamp_(0.0, 1.0)
        if self.randaug is not None:
            x = self.randaug(x).clamp_(0.0, 1.0)
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x


# ----------------------------------------------------------------------------- the classifier


class Classifier(nn.Module):
    """An encoder built with its ``CLASSIFIER_OPTIONS`` and a ``head``, with a ``training_step``.

    Args:
        encoder: a mimkit encoder whose ``forward`` gives logits ``[N, classes]`` and which has
            ``head`` (``nn.Linear``), ``depth`` and ``layer_id(name)``.
        mix: MixUp / CutMix of the training batches (None: smoothed labels only).
        smoothing: label smoothing when ``mix`` is None.
        layer_decay: layer-wise lr decay factor used by :meth:`layer_scale`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        mix: MixUpCutMix | None = None,
        smoothing: float = 0.0,
        layer_decay: float = 1.0,
    ):
        super().__init__()
        if not isinstance(getattr(encoder, "head", None), nn.Linear):
            raise ValueError(
                f"{type(encoder).__name__} has no classification head; build it with num_classes > 0"
            )
        self.encoder = encoder
        self.num_classes = encoder.head.out_features
        self.mix = mix
        self.smoothing = smoothing
        self.layer_decay = layer_decay

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` normalised -> logits ``[N, classes]``."""
        return self.encoder(images)

    def training_step(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Soft-target cross-entropy of (mixed) images against (mixed, smoothed) labels."""
        images, labels = batch[0], batch[1]
        if self.mix is not None:
            images, targets = self.mix(images, labels)
        else:
            targets = smooth_one_hot(labels, self.num_classes, self.smoothing)
        logits = self(images)
        loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return {"loss": loss}

    @property
    def num_layers(self) -> int:
        return self.encoder.depth + 1

    def layer_scale(self, name: str) -> float:
        """lr multiplier of parameter ``name`` (of this module): ``decay ** (num_layers - layer_id)``."""
        layer = self.encoder.layer_id(name.removeprefix("encoder."))
        return self.layer_decay ** (self.num_layers - layer)

    def set_trainable_blocks(self, k: int | None) -> list[str]:
        """Freeze everything below the last ``k`` blocks (``requires_grad = False``); None = train all.

        Trainable: parameters with ``layer_id >= depth + 1 - k``, i.e. the last ``k`` blocks and what sits
        above them (final norm, fc_norm, head). ``k = 0``: those top parameters only. Parameters that are
        fixed by design (the sin-cos ``pos_embed``) stay fixed.

        Returns:
            The names of the parameters left trainable.
        """
        depth = self.encoder.depth
        if k is not None and k > depth:
            raise ValueError(
                f"train_blocks={k} is more than the encoder's {depth} blocks; use 0..{depth} or None"
            )
        lowest = 0 if k is None else depth + 1 - k
        trainable = []
        for name, param in self.encoder.named_parameters():
            if self.encoder.layer_id(name) < lowest:
                param.requires_grad_(False)
            elif param.requires_grad:
                trainable.append("encoder." + name)
        return trainable

    @torch.no_grad()
    def accuracy(self, loader, transform: nn.Module, device: torch.device | str) -> float:
        """Top-1 accuracy (%) over ``loader``'s ``(uint8 images, labels)``; one host sync at the end."""
        was_training = self.training
        self.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        total = 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            correct += (self(transform(images)).argmax(dim=-1) == labels).sum()
            total += labels.shape[0]
        self.train(was_training)
        return 100.0 * int(correct) / max(total, 1)


def build_classifier(
    encoder_cfg: dict[str, Any],
    num_classes: int,
    pretrained: nn.Module | None = None,
    cfg: FinetuneConfig | None = None,
    seed: int | None = 0,
) -> Classifier:
    """A :class:`Classifier` from an encoder config, loaded with ``pretrained``'s weights (None: random init).

    The encoder is rebuilt with ``num_classes``, its class's ``CLASSIFIER_OPTIONS`` and the drop-path
    rate of ``cfg``, at ``cfg.img_size`` if given. The pretrained weights go in through
    :func:`mimkit.load_weights` (position embeddings resampled if the patch grid changed); every key must
    match except ``fc_norm.*`` / ``head.*``, which start fresh (head ~ truncated N(0, 2e-5), bias 0), and
    a ViT's ``norm.*``, which the classifier replaces by ``fc_norm``.

    Args:
        encoder_cfg: ``{"name": ..., **options}`` as in a run's config (img_size / in_chans included).
        num_classes: classes of the head.
        pretrained: a loaded encoder of the same architecture, or None.
        cfg: the recipe (drop path, smoothing, mixing, layer decay, partial fine-tuning, size).
        seed: the fresh parameters are drawn from this seed (the global RNG is left as it was); None uses
            the global RNG.

    Raises:
        ValueError: ``pretrained`` has keys the classifier lacks, or lacks some it needs.
    """
    from mimkit.models import create_encoder, encoder_class

    cfg = cfg or FinetuneConfig()
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    options = {k: v for k, v in encoder_cfg.items() if k != "name"}
    # the family's reference classifier; MAE's (avg pool + fc_norm) for an encoder that does not say
    family = encoder_class(encoder_cfg["name"])
    options.update(getattr(family, "CLASSIFIER_OPTIONS", {"global_pool": "avg", "fc_norm": True}))
    options.update(num_classes=num_classes, drop_path_rate=cfg.drop_path)
    if cfg.img_size is not None:
        options["img_size"] = size_pair(cfg.img_size, "img_size")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        encoder = create_encoder(encoder_cfg["name"], **options)
        nn.init.trunc_normal_(encoder.head.weight, std=2e-5)
        nn.init.zeros_(encoder.head.bias)
    if pretrained is not None:
        load_pretrained_encoder(encoder, pretrained)
    mix = MixUpCutMix(num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.switch_prob, cfg.smoothing)
    classifier = Classifier(encoder, mix if mix.active else None, cfg.smoothing, cfg.layer_decay)
    classifier.set_trainable_blocks(cfg.train_blocks)
    return classifier


def load_pretrained_encoder(target: nn.Module, pretrained: nn.Module) -> list[str]:
    """Copy ``pretrained``'s weights into ``target`` (same architecture, plus fc_norm / head).

    Returns:
        The keys of ``target`` left at their initial values (only ``fc_norm.*`` / ``head.*``).

    Raises:
        ValueError: naming any key of ``pretrained`` that ``target`` lacks, or of ``target`` (other than
            fc_norm / head) that ``pretrained`` lacks.
    """
    expected = target.state_dict()
    # A ViT classifier pools through fc_norm instead of the final per-token norm (MAE's fine-tuning
    # model): the pretrained norm.* has no place in it and is left out, as the reference does.
    dropped = ("norm.",) if not any(k.startswith("norm.") for k in expected) else ()
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(_FRESH + dropped)}
    unexpected = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state and not k.startswith(_FRESH))
    if unexpected or missing:
        raise ValueError(
            f"the pretrained {type(pretrained).__name__} does not fit the classifier's "
            f"{type(target).__name__}: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    grid = getattr(pretrained, "grid_size", None)
    load_weights(target, {"model": state, "grid_size": list(grid) if grid else None}, strict=False)
    return sorted(k for k in expected if k not in state)


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
        :func:`at_chance`.
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
    run_config = _plain({"finetune": asdict(cfg), **(config or {}), "method": method})
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


AT_CHANCE = 0.99  # a final training loss above this share of ln(classes) is a run that did not learn


def final_train_loss(run_dir: str | os.PathLike, tail: float = 0.1) -> float | None:
    """Mean training loss that ``run_dir/metrics.jsonl`` logged over the last ``tail`` of the run's steps.

    Each logged loss is already the mean over its log interval; at least the last one is taken. Lines
    that are not JSON (a run killed while writing) are skipped. None when no loss was logged.
    """
    path = Path(run_dir, "metrics.jsonl")
    logged: list[tuple[int, float]] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "loss" in record and "step" in record:
                logged.append((int(record["step"]), float(record["loss"])))
    if not logged:
        return None
    last_step = max(step for step, _ in logged)
    tail_losses = [loss for step, loss in logged if step > (1 - tail) * last_step] or [logged[-1][1]]
    return sum(tail_losses) / len(tail_losses)


def at_chance(result: dict[str, Any]) -> bool:
    """Whether a fine-tuning run (:func:`finetune`'s result) ended with its training loss at chance level.

    Cross-entropy against a uniform prediction is ``ln(classes)`` whatever the targets (one-hot, smoothed
    or mixed), so a final training loss at ``AT_CHANCE`` of that or above means the classifier collapsed to
    (nearly) uniform outputs: its test accuracy says nothing of the encoder, and the run's lr was likely too
    high for it. A result without these fields is never flagged (``finished_runs`` of
    :mod:`mimkit.eval.label_efficiency` fills them in for runs written before they existed).
    """
    loss, chance = result.get("final_train_loss"), result.get("chance_loss")
    return loss is not None and chance is not None and loss >= AT_CHANCE * chance


# What may change between the calls of one run: where and how it runs, and its length (a longer schedule
# goes on from the checkpoint). Every other recipe setting must stay that of the run's first call.
RESUMABLE_CHANGES = frozenset(
    ["eval_batch_size"]
    + [
        f"train.{key}"
        for key in ("device", "compile", "progress", "log_every", "save_every_steps", "tensorboard", "resume")
        + ("epochs", "max_steps", "warmup_epochs")
    ]
)
RECIPE_FILE = "recipe.json"


def check_recipe(run_dir: str | os.PathLike, cfg: FinetuneConfig, write: bool = True) -> None:
    """Keep a run directory to one recipe: ``run_dir/recipe.json`` records the first call's; a later call
    (resuming the run, or re-evaluating a finished one) with other settings raises a ValueError naming them.

    Settings in :data:`RESUMABLE_CHANGES` are not compared; ``train.resume=false`` (start over) replaces the
    record. A run directory with a checkpoint but no record (from before the record existed) is neither
    checked nor given one.
    """
    recipe = recipe_record(cfg)
    path = Path(run_dir, RECIPE_FILE)
    if cfg.train.resume and path.is_file():
        saved = json.loads(path.read_text())
        changed = recipe_changes(saved, recipe)
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {recipe.get(k)!r}" for k in changed)
            raise ValueError(
                f"{run_dir} holds a fine-tuning run with another recipe ({diff}); "
                "use another output directory, or train.resume=false to start it over"
            )
        return
    starts_afresh = not cfg.train.resume or not Path(run_dir, ckpt.LAST).is_file()
    if write and starts_afresh:  # a run from before the record keeps none: its recipe is not known
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(RECIPE_FILE + ".tmp")  # other processes of the run may be reading it
        partial.write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
        os.replace(partial, path)


def recipe_record(cfg: FinetuneConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that make a recipe, flat (``"train.blr"``) and as JSON reads them back:
    everything but :data:`RESUMABLE_CHANGES`."""
    flat = _flat(json.loads(json.dumps(asdict(cfg))))
    return {key: value for key, value in flat.items() if key not in RESUMABLE_CHANGES}


def recipe_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The sorted keys on which two :func:`recipe_record` records differ."""
    return sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"blr": 1}}`` -> ``{"train.blr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _replace_train(train: TrainConfig, **changes: Any) -> TrainConfig:
    from dataclasses import replace

    return replace(train, **changes)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (configs stored in checkpoints stay plain)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
