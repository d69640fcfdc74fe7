"""The fine-tuning classifier: an encoder built with its family's ``CLASSIFIER_OPTIONS`` and a ``head``.

A ViT becomes MAE's fine-tuning model (mean of the patch tokens -> ``fc_norm`` -> head, the final per-token
``norm`` replaced by ``fc_norm``), a Swin SimMIM's (final ``norm`` -> mean of the tokens -> head). It is
loaded with the pretrained weights; only ``fc_norm`` and ``head`` start fresh. It knows layer-wise lr decay,
partial fine-tuning and its ``training_step`` (soft targets from label smoothing and MixUp / CutMix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mimkit.data.config import size_pair
from mimkit.data.mixing import MixUpCutMix, smooth_one_hot
from mimkit.engine.config import named_options
from mimkit.eval.recipe import FinetuneConfig
from mimkit.models import create_encoder, encoder_class
from mimkit.weights import load_weights

_FRESH = ("fc_norm.", "head.")  # the classifier's own parameters: never taken from a pretrained encoder


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
    cfg = cfg or FinetuneConfig()
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    _, options = named_options(encoder_cfg)
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
