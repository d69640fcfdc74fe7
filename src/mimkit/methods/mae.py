"""Masked Autoencoders (He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners").

75% of the patches are removed at random; the encoder sees only the visible ones (what makes MAE
cheap); a light decoder fills mask tokens back in and predicts the pixels of every patch; the loss is
the MSE on the removed patches only, optionally against per-patch normalised pixels (``norm_pix_loss``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mimkit.heads import MAEDecoder
from mimkit.hub import Pretrained
from mimkit.losses import masked_mse, normalize_patches
from mimkit.masking import TokenMask, check_token_mask, random_token_mask, token_mask_from
from mimkit.masking.random_tokens import check_ratio
from mimkit.methods.panels import reconstruction_panels
from mimkit.methods.registry import METHODS
from mimkit.models.masked import check_masked_encoder
from mimkit.models.patches import patchify, pixel_mask, unpatchify


@METHODS.register("mae")
class MAE(Pretrained, nn.Module):
    """MAE around a ViT encoder.

    Args:
        encoder: a :class:`~mimkit.models.VisionTransformer` (a
            :class:`~mimkit.models.masked.MaskedEncoder` that drops tokens).
        decoder_dim: decoder width (reference 512).
        decoder_depth: decoder blocks (reference 8).
        decoder_heads: decoder attention heads (reference 16).
        mask_ratio: fraction of patches removed, in (0, 1).
        norm_pix_loss: regress per-patch normalised pixels.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
    ):
        super().__init__()
        check_masked_encoder(
            encoder, "MAE", drops_tokens=True, hint="use a vit_* encoder (Swin goes with SimMIM)"
        )
        self.encoder = encoder
        self.mask_ratio = check_ratio(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = encoder.patch_size
        self.decoder = MAEDecoder(
            grid_size=encoder.grid_size,
            embed_dim=encoder.embed_dim,
            patch_dim=encoder.patch_size**2 * encoder.in_chans,
            decoder_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
        )

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """The regression target ``[N, L, p*p*C]`` (normalised per patch with ``norm_pix_loss``)."""
        target = patchify(images, self.patch_size)
        return normalize_patches(target)[0] if self.norm_pix_loss else target

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``images`` [N, C, H, W]; ``noise`` [N, L] optional, replaces the random draw.

        Returns:
            ``loss`` (scalar), ``pred`` [N, L, p*p*C] (in target space), ``mask`` [N, L] (1 = removed).
        """
        n, (gh, gw) = images.shape[0], self.encoder.grid_size
        return self._masked_pass(images, random_token_mask(n, gh * gw, self.mask_ratio, noise, images.device))

    def _masked_pass(self, images: torch.Tensor, token_mask: TokenMask) -> dict[str, torch.Tensor]:
        """:meth:`forward` with its mask drawn: ``loss``, ``pred``, ``mask``."""
        latent = self.encoder.forward_encoder(images, ids_keep=token_mask.ids_keep)  # [N, 1 + K, D]
        pred = self.decoder(latent, token_mask.ids_restore)  # [N, L, p*p*C]
        loss = masked_mse(pred, self.target(images), token_mask.mask)
        return {"loss": loss, "pred": pred, "mask": token_mask.mask}

    def training_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The trainer's entry point: ``batch = (images, labels)``; labels are ignored."""
        return self(batch[0])

    @torch.no_grad()
    def loss_baseline(self, batch: tuple[torch.Tensor, ...]) -> tuple[str, dict[str, torch.Tensor]]:
        """What the loss would be for a prediction that learned nothing: zeros, in the space the loss
        compares in. With ``norm_pix_loss`` that is each patch's own mean (just under 1 per patch with
        contrast, 0 for a flat one); without, the data's mean colour (the data are normalised by it). Masks
        do not look at the pixels, so the mean over every patch is the masked patches' on average. The
        trainer shows the loss against it (:mod:`mimkit.engine.health`).

        Returns:
            ``(what the trivial prediction is, {"loss": scalar})``.
        """
        meaning = (
            "predicting each patch's mean" if self.norm_pix_loss else "predicting the data's mean colour"
        )
        return meaning, {"loss": self.target(batch[0]).float().pow(2).mean()}

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, noise: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """:func:`~mimkit.methods.panels.reconstruction_panels` in pixel space (with ``norm_pix_loss`` each
        patch de-normalised with the input's own mean and std, else it looks like noise).

        Args:
            images: ``[N, C, H, W]``.
            noise: ``[N, L]``, replaces the random draw of the mask.
            mask: ``[N, L]`` or ``[N, gh, gw]``, 1 = removed: the mask itself (every image removing the same
                number of patches); the loss is NaN when it removes none.
        """
        if mask is None:
            out = self(images, noise=noise)
        else:
            tokens = check_token_mask(mask.to(images.device), images.shape[0], self.encoder.grid_size)
            out = self._masked_pass(images, token_mask_from(tokens))
        pred = out["pred"].float()
        if self.norm_pix_loss:
            _, mean, std = normalize_patches(patchify(images.float(), self.patch_size))
            pred = pred * std + mean
        grid, p = self.encoder.grid_size, self.patch_size
        mask = pixel_mask(out["mask"], p, grid)
        return reconstruction_panels(images, unpatchify(pred, p, grid, images.shape[1]), mask, out["loss"])
