"""SiT (Atito et al., 2021, "SiT: Self-supervised vIsion Transformer") and its GMML core.

Group masked model learning (GMML): connected groups of pixels are corrupted (zeros, Gaussian noise,
pixels of another image), the ViT sees the whole corrupted image and a light head rebuilds the pixels,
with an L1 loss on the corrupted pixels (``recon_loss="masked"``, GMML) or on the whole image
(``recon_loss="full"``, the SiT paper). SiT adds a contrastive part: two augmented views per image; the
student (encoder + projection head on the class token) sees the corrupted views, a momentum (EMA)
teacher sees the clean ones, and NT-Xent (temperature 0.2) pairs student(corrupted view 1) with
teacher(clean view 2) and student(corrupted view 2) with teacher(clean view 1). Total loss
``alpha * recon + contrastive``.

``create_method("gmml", ...)`` is the reconstruction-only preset: no teacher, no projection head, one
augmented view per image.

The data pipeline hands over normalised, un-augmented images at the model size; the views are made
here, on the device (:class:`~mimkit.methods.views.TwoViewAugment`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from mimkit import rng
from mimkit.heads.sit import ProjectionHead, SiTReconstructionHead
from mimkit.hub import Pretrained
from mimkit.losses.contrastive import nt_xent
from mimkit.losses.l1 import masked_l1
from mimkit.masking.explicit import check_token_mask
from mimkit.masking.gmml import MAX_RECTS, check_fills, check_geometry, check_max_ratios, gmml_corrupt
from mimkit.methods.registry import METHODS
from mimkit.methods.views import TwoViewAugment
from mimkit.models.masked import check_masked_encoder
from mimkit.models.patches import pixel_mask

RECON_LOSSES = ("masked", "full")


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter, in place.

    Buffers (BatchNorm statistics) are not averaged: the teacher keeps its own.
    """
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), 1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """EMA momentum rising from ``start`` (step 0) to ``end`` (step ``total_steps``) on a half-cosine
    (BYOL / DINO / SiT teachers): ``end - (end - start) * (cos(pi * step / total_steps) + 1) / 2``; steps
    outside ``[0, total_steps]`` are clamped."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    t = min(max(step, 0), total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * t) + 1) / 2


@METHODS.register("sit")
class SiT(Pretrained, nn.Module):
    """SiT around a ViT encoder (``method.encoder`` is the student ViT that evaluation uses).

    Args:
        encoder: a :class:`~mimkit.models.VisionTransformer` (``forward_encoder``, ``patch_size``,
            ``grid_size``, ``img_size``, ``in_chans``, ``embed_dim``).
        fill: corruption fill(s): ``"zeros"``, ``"noise"``, ``"replace"`` or a list of them, applied one
            after the other (default noise + replace, the paper's best).
        max_ratio: largest corrupted fraction per fill, in ``[0, 1)`` (``None``: 0.7 for zeros / noise,
            0.3 for replace).
        max_side: largest rectangle side as a fraction of the image side.
        align: 1 (unaligned, default) or the patch size (rectangles snapped to patches).
        noise_std: standard deviation of the noise fill (the images are normalised).
        recon_loss: ``"masked"`` (L1 on corrupted pixels, GMML) or ``"full"`` (L1 on the whole image, SiT).
        recon_hidden_dim: reconstruction MLP width (reference 2048).
        recon_layers: reconstruction MLP depth.
        contrastive: add the projection head, the EMA teacher and NT-Xent (``False`` = GMML).
        alpha: weight of the reconstruction loss, ``>= 0`` (5 for small datasets, 1 for ImageNet);
            only used with ``contrastive``.
        temperature: NT-Xent temperature.
        proj_hidden_dim: projection head width (reference 4096).
        proj_dim: projection output width (reference 256).
        proj_layers: Linear layers in the projection head (reference 3).
        momentum: teacher momentum at step 0; it rises to 1 on a cosine over training.
        augment: make the views here (``False``: the batch is used as is, for pipelines that augment).
        pixel_mean: the data pipeline's per-channel mean, so colour jitter / solarise work on real
            ``[0, 1]`` pixels (pretraining gives the training data's); ``None`` uses each batch's
            per-channel range instead.
        pixel_std: the data pipeline's per-channel standard deviation (with ``pixel_mean``).
        augment_options: extra :class:`~mimkit.methods.views.TwoViewAugment` options (``blur_p``, ...).
    """

    def __init__(
        self,
        encoder: nn.Module,
        fill: str | Sequence[str] = ("noise", "replace"),
        max_ratio: float | Sequence[float] | None = None,
        max_side: float = 0.3,
        align: int = 1,
        noise_std: float = 1.0,
        recon_loss: str = "full",
        recon_hidden_dim: int = 2048,
        recon_layers: int = 2,
        contrastive: bool = True,
        alpha: float = 5.0,
        temperature: float = 0.2,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        proj_layers: int = 3,
        momentum: float = 0.996,
        augment: bool = True,
        pixel_mean: Sequence[float] | float | None = None,
        pixel_std: Sequence[float] | float | None = None,
        augment_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        check_masked_encoder(encoder, "SiT", class_token=True, hint="use a vit_* encoder")
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {list(RECON_LOSSES)}, got {recon_loss!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"alpha (weight of the reconstruction loss) must be >= 0, got {alpha!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.fills = check_fills(fill)
        self.max_ratios = check_max_ratios(self.fills, max_ratio)
        check_geometry(tuple(encoder.img_size), max_side, align, MAX_RECTS)
        self.max_side = float(max_side)
        self.align = align
        self.noise_std = float(noise_std)
        self.recon_loss = recon_loss
        self.contrastive = bool(contrastive)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.base_momentum = float(momentum)
        self.momentum = float(momentum)  # the current value, updated by on_train_step_end

        self.encoder = encoder
        self.recon_head = SiTReconstructionHead(
            encoder.embed_dim,
            encoder.patch_size,
            encoder.grid_size,
            encoder.in_chans,
            hidden_dim=recon_hidden_dim,
            num_layers=recon_layers,
        )
        self.augment = (
            TwoViewAugment(
                encoder.img_size, encoder.in_chans, pixel_mean, pixel_std, **(augment_options or {})
            )
            if augment
            else None
        )
        if self.contrastive:
            self.projector = ProjectionHead(encoder.embed_dim, proj_hidden_dim, proj_dim, proj_layers)
            # The teacher starts as a copy of the student and only ever moves by EMA.
            self.teacher_encoder = copy.deepcopy(encoder).requires_grad_(False)
            self.teacher_projector = copy.deepcopy(self.projector).requires_grad_(False)
            self.teacher_encoder.eval()

    def train(self, mode: bool = True) -> SiT:
        """As :meth:`nn.Module.train`, but the teacher encoder stays in eval mode (no drop path)."""
        super().train(mode)
        if self.contrastive:
            self.teacher_encoder.eval()
        return self

    def corrupt(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GMML corruption with this method's settings: ``[N, C, H, W]`` -> (corrupted, mask [N, 1, H, W])."""
        return gmml_corrupt(
            images,
            self.fills,
            self.max_ratios,
            self.max_side,
            self.align,
            self.noise_std,
            generator=generator,
        )

    def reconstruction_loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """L1 on the corrupted pixels (``"masked"``) or on every pixel (``"full"``), in float32.

        Args:
            pred: reconstruction ``[N, C, H, W]``.
            target: clean images ``[N, C, H, W]``.
            mask: ``[N, 1, H, W]``, 1 = corrupted.
        """
        if self.recon_loss == "masked":
            return masked_l1(pred, target, mask)
        return (pred.float() - target.float()).abs().mean()

    def _corrupt_patches(
        self, images: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The patches of a token ``mask`` filled: ``(corrupted [N, C, H, W], pixel mask [N, 1, H, W])``."""
        grid, p = self.encoder.grid_size, self.encoder.patch_size
        pixels = pixel_mask(check_token_mask(mask.to(images.device), images.shape[0], grid), p, grid)
        fill = torch.zeros_like(images)
        if "noise" in self.fills:
            rand_device = generator.device if generator is not None else images.device
            noise = rng.randn(*images.shape, generator=generator, device=rand_device)
            fill = noise.to(images.device, images.dtype) * self.noise_std
        return images * (1 - pixels) + fill * pixels, pixels

    def _student(self, corrupted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupted images ``[B, C, H, W]`` -> (reconstruction ``[B, C, H, W]``, class token ``[B, D]``)."""
        tokens = self.encoder.forward_encoder(corrupted)  # [B, 1 + L, D]
        return self.recon_head(tokens[:, 1:]), tokens[:, 0]

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Losses on already augmented views (``view2`` is needed with the contrastive part).

        Args:
            view1: ``[N, C, H, W]`` clean (normalised) view of ``N`` images.
            view2: a second view of the same images, or None without the contrastive part.
            generator: optional, for a reproducible corruption.

        Returns:
            ``loss``, ``loss_recon`` (and ``loss_contrastive``) scalars, ``pred`` [N, C, H, W] the
            reconstruction of view 1 and ``mask`` [N, 1, H, W] its corruption (1 = corrupted), both detached.
        """
        n = view1.shape[0]
        if not self.contrastive:
            corrupted, mask = self.corrupt(view1, generator)
            pred, _ = self._student(corrupted)
            loss_recon = self.reconstruction_loss(pred, view1, mask)
            return {"loss": loss_recon, "loss_recon": loss_recon, "pred": pred.detach(), "mask": mask}
        if view2 is None or view2.shape != view1.shape:
            raise ValueError(
                "SiT's contrastive part needs two views of the same shape, got "
                f"{tuple(view1.shape)} and {None if view2 is None else tuple(view2.shape)}"
            )
        # Each view corrupted on its own: 'replace' must paste from another image, not the other view.
        corrupted1, mask1 = self.corrupt(view1, generator)
        corrupted2, mask2 = self.corrupt(view2, generator)
        clean = torch.cat([view1, view2])  # [2N, C, H, W]
        corrupted, mask = torch.cat([corrupted1, corrupted2]), torch.cat([mask1, mask2])
        pred, cls = self._student(corrupted)  # [2N, C, H, W], [2N, D]
        student = self.projector(cls)  # [2N, E]
        with torch.no_grad():
            teacher = self.teacher_projector(self.teacher_encoder.forward_encoder(clean)[:, 0])  # [2N, E]
        loss_recon = self.reconstruction_loss(pred, clean, mask)
        loss_contrastive = (
            0.5
            * (
                nt_xent(student[:n], teacher[n:], self.temperature)  # corrupted view 1 <-> clean view 2
                + nt_xent(student[n:], teacher[:n], self.temperature)  # corrupted view 2 <-> clean view 1
            )
        )
        return {
            "loss": self.alpha * loss_recon + loss_contrastive,
            "loss_recon": loss_recon,
            "loss_contrastive": loss_contrastive,
            "pred": pred[:n].detach(),
            "mask": mask[:n],
        }

    def _views(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The views a training step sees: two (contrastive) or one (GMML), made here unless ``augment``
        is off (then the batch itself)."""
        if self.augment is None:
            return (images, images) if self.contrastive else (images,)
        if self.contrastive:
            return tuple(self.augment(images))
        return (self.augment.view(images, 1),)  # GMML: one view, the milder pipeline

    def training_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The trainer's entry point: ``batch = (images, labels)``, labels ignored; views made here."""
        return self(*self._views(batch[0]))

    @torch.no_grad()
    def loss_baseline(self, batch: tuple[torch.Tensor, ...]) -> tuple[str, dict[str, torch.Tensor]]:
        """What the losses would be for a model that learned nothing, on views of the batch the trainer
        hands to :meth:`training_step`; the trainer shows the loss against it (:mod:`mimkit.engine.health`).

        Reconstruction: the data's mean colour, zero in the normalised space the L1 loss compares in (not
        each patch's own mean: the model sees the corrupted image, not the clean patch). Contrastive:
        embeddings that tell no image from another, so every candidate is as likely as the positive:
        ``ln(2M - 1)`` for ``M`` images over all processes (NT-Xent's ``2M - 1`` candidates per anchor).
        The views are random: the trainer keeps this call's draws out of the training's.

        Returns:
            ``(what the trivial prediction is, {"loss", "loss_recon"[, "loss_contrastive"]: scalars})``.
        """
        views = self._views(batch[0])
        recon = torch.stack([v.float().abs().mean() for v in views]).mean()
        if not self.contrastive:
            return "predicting the data's mean colour", {"loss": recon, "loss_recon": recon}
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        contrastive = torch.tensor(2.0 * views[0].shape[0] * world - 1).log()
        return "predicting the data's mean colour and embeddings at chance", {
            "loss": self.alpha * recon + contrastive,
            "loss_recon": recon,
            "loss_contrastive": contrastive,
        }

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Move the teacher towards the student with the momentum of the cosine schedule at ``step``."""
        if not self.contrastive:
            return
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update_(self.teacher_encoder, self.encoder, self.momentum)
        ema_update_(self.teacher_projector, self.projector, self.momentum)

    @torch.no_grad()
    def reconstruct(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Corrupt and rebuild ``images`` (no view augmentation), for pictures.

        Args:
            images: ``[N, C, H, W]`` normalised; ``N >= 2`` when a fill is ``"replace"`` (and no ``mask``).
            generator: fixes the corruption.
            mask: ``[N, L]`` or ``[N, gh, gw]`` patches to corrupt (1) instead of drawn groups: filled with
                the noise fill when the method has one, else zeros (``"replace"`` would need a second image).

        Returns:
            ``corrupted``, ``reconstruction`` ``[N, C, H, W]`` (in the input's normalised space),
            ``mask`` ``[N, 1, H, W]`` (1 = corrupted) and ``loss_recon``.
        """
        if mask is None:
            corrupted, mask = self.corrupt(images.float(), generator)
        else:
            corrupted, mask = self._corrupt_patches(images.float(), mask, generator)
        pred, _ = self._student(corrupted)
        pred = pred.float()
        return {
            "corrupted": corrupted,
            "reconstruction": pred,
            "mask": mask,
            "loss_recon": self.reconstruction_loss(pred, images, mask),
        }


# SiT options that only act on the contrastive part (alpha weighs the reconstruction against it).
_CONTRASTIVE_OPTIONS = (
    "contrastive", "alpha", "temperature", "proj_hidden_dim", "proj_dim", "proj_layers", "momentum",
)  # fmt: skip


@METHODS.register("gmml")
def gmml(encoder: nn.Module, pixel_mean: Any = None, pixel_std: Any = None, **kwargs: Any) -> SiT:
    """GMML preset: reconstruction only (no teacher, no contrastive loss), L1 on corrupted pixels.

    Options of the contrastive part (teacher, projector, loss weighting) are refused rather than ignored;
    ``pixel_mean`` / ``pixel_std`` are named so that pretraining hands over the data's, as to :class:`SiT`.
    """
    unused = [k for k in _CONTRASTIVE_OPTIONS if k in kwargs]
    if unused:
        given = ", ".join(f"{k}={kwargs[k]!r}" for k in unused)
        raise ValueError(
            f"the gmml preset has no contrastive part (no teacher, no projector, the loss is the "
            f"reconstruction alone); remove {given}, or use method 'sit'"
        )
    kwargs.setdefault("recon_loss", "masked")
    return SiT(encoder, contrastive=False, pixel_mean=pixel_mean, pixel_std=pixel_std, **kwargs)
