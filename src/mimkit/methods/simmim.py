"""SimMIM (Xie et al., 2021, "SimMIM: a Simple Framework for Masked Image Modeling").

Square cells of ``mask_patch_size`` pixels are masked at random (60% by default); the encoder sees every
token, the masked ones' embeddings replaced by a learned ``mask_token`` before the position embedding (ViT)
or right after the patch embedding (Swin, which has none); a one-layer head (1x1 conv + pixel shuffle)
predicts the raw pixels from the encoder's last feature map; the loss is the L1 error on masked pixels.

Works on any encoder with the masked-encoder interface ``forward_encoder(x, mask=..., mask_token=...)``,
``patch_size``, ``grid_size``, ``in_chans``, ``embed_dim`` (the width the mask token replaces), and
optionally ``out_stride`` / ``num_features`` (total downsampling and final width; a ViT's are its patch
size and ``embed_dim``) and ``num_prefix_tokens`` (leading non-patch tokens to drop; 0 if absent).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mimkit.heads import PixelShuffleHead
from mimkit.hub import Pretrained
from mimkit.losses import masked_l1, patch_mean_l1
from mimkit.masking import BlockMaskGenerator
from mimkit.methods.registry import METHODS
from mimkit.models.masked import check_masked_encoder


def encoder_out_stride(encoder: nn.Module) -> int:
    """Total downsampling of an encoder's last feature map: ``out_stride`` if set, else ``patch_size``."""
    return int(getattr(encoder, "out_stride", encoder.patch_size))


def encoder_num_features(encoder: nn.Module) -> int:
    """Width of an encoder's last feature map: ``num_features`` if set, else ``embed_dim``."""
    return int(getattr(encoder, "num_features", encoder.embed_dim))


@METHODS.register("simmim")
class SimMIM(Pretrained, nn.Module):
    """SimMIM around a ViT or a Swin encoder.

    Args:
        encoder: a :class:`~mimkit.models.VisionTransformer` or :class:`~mimkit.models.SwinTransformer`.
        mask_patch_size: side of a mask cell in pixels; a multiple of the encoder's patch size that tiles
            the image (reference: 32).
        mask_ratio: fraction of the cells masked, in (0, 1) (reference: 0.6).

    Raises:
        ValueError: an encoder without the masked-encoder interface, a bad ``mask_patch_size`` or ratio.
    """

    def __init__(self, encoder: nn.Module, mask_patch_size: int = 32, mask_ratio: float = 0.6):
        super().__init__()
        check_masked_encoder(encoder, "SimMIM", hint="use a vit_* or swin_* encoder")
        self.encoder = encoder
        self.patch_size = encoder.patch_size
        self.in_chans = encoder.in_chans
        self.stride = encoder_out_stride(encoder)
        self.num_prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 0))
        self.mask_generator = BlockMaskGenerator(
            encoder.grid_size, encoder.patch_size, mask_patch_size, mask_ratio
        )
        self.mask_patch_size = mask_patch_size
        self.mask_ratio = self.mask_generator.mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = PixelShuffleHead(encoder_num_features(encoder), self.in_chans, self.stride)

    def _token_mask(self, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``[N, L]`` float token mask: drawn, or the caller's ``[N, L]`` / ``[N, gh, gw]`` checked."""
        n = images.shape[0]
        gh, gw = self.encoder.grid_size
        if mask is None:
            return self.mask_generator(n, device=images.device).flatten(1)
        if tuple(mask.shape) not in ((n, gh * gw), (n, gh, gw)):
            raise ValueError(
                f"mask must be [N, L] = {(n, gh * gw)} or [N, gh, gw] = {(n, gh, gw)}, "
                f"got {tuple(mask.shape)}"
            )
        return mask.reshape(n, gh * gw).to(device=images.device, dtype=torch.float32)

    def pixel_mask(self, token_mask: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` token mask -> ``[N, 1, H, W]`` pixel mask (each token repeated over its patch)."""
        gh, gw = self.encoder.grid_size
        p = self.patch_size
        grid = token_mask.view(-1, gh, gw)
        return grid.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2).unsqueeze(1)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``images`` [N, C, H, W] (normalised); ``mask`` optional [N, L] or [N, gh, gw], 1 = masked.

        Returns:
            ``loss`` (scalar L1 on masked pixels, against the normalised input), ``pred`` [N, C, H, W] (the
            reconstruction of the whole image), ``mask`` [N, L] (1 = masked token).
        """
        n, _, h, w = images.shape
        token_mask = self._token_mask(images, mask)  # [N, L]
        tokens = self.encoder.forward_encoder(images, mask=token_mask, mask_token=self.mask_token)
        tokens = tokens[:, self.num_prefix_tokens :]  # [N, L_final, D]: patch tokens only
        fh, fw = h // self.stride, w // self.stride
        features = tokens.transpose(1, 2).reshape(n, tokens.shape[-1], fh, fw)  # [N, D, H/s, W/s]
        pred = self.decoder(features)  # [N, C, H, W]
        loss = masked_l1(pred, images, self.pixel_mask(token_mask))
        return {"loss": loss, "pred": pred, "mask": token_mask}

    def training_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The trainer's entry point: ``batch = (images, labels)``; labels are ignored."""
        return self(batch[0])

    @torch.no_grad()
    def loss_baseline(self, batch: tuple[torch.Tensor, ...]) -> tuple[str, dict[str, torch.Tensor]]:
        """What the loss would be for a prediction that learned nothing: each patch's mean colour (per
        channel), on the batch the trainer hands to :meth:`training_step`; the trainer shows the loss
        against it (:mod:`mimkit.engine.health`).

        Returns:
            ``(what the trivial prediction is, {"loss": scalar})``.
        """
        return "predicting each patch's mean", {"loss": patch_mean_l1(batch[0], self.patch_size)}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Reconstruction for people to look at, in the input's (normalised) space.

        Returns:
            ``reconstruction`` [N, C, H, W] (the head's output everywhere), ``masked`` (the input with the
            masked pixels zeroed), ``pasted`` (the reconstruction on masked pixels, the input elsewhere),
            ``mask`` [N, 1, H, W] (1 = masked), ``loss``.
        """
        out = self(images, mask=mask)
        recon = out["pred"].float()
        pixel_mask = self.pixel_mask(out["mask"])
        return {
            "reconstruction": recon,
            "masked": images * (1 - pixel_mask),
            "pasted": images * (1 - pixel_mask) + recon * pixel_mask,
            "mask": pixel_mask,
            "loss": out["loss"],
        }
