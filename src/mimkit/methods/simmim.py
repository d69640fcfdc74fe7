"""SimMIM (Xie et al., 2021, "SimMIM: a Simple Framework for Masked Image Modeling").

Square cells of ``mask_patch_size`` pixels are masked at random (60% by default); the encoder sees every
token, the masked ones' embeddings replaced by a learned ``mask_token`` before the position embedding (ViT)
or right after the patch embedding (Swin, which has none); a one-layer head (1x1 conv + pixel shuffle)
predicts the raw pixels from the encoder's last feature map; the loss is the L1 error on masked pixels.

Works on any :class:`~mimkit.models.masked.MaskedEncoder`: the head reads its ``num_features``-wide output
tokens (after the ``num_prefix_tokens``) as a map ``out_stride`` times smaller than the image.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mimkit.heads import PixelShuffleHead
from mimkit.hub import Pretrained
from mimkit.losses import masked_l1
from mimkit.masking import BlockMaskGenerator, check_token_mask
from mimkit.methods.panels import reconstruction_panels
from mimkit.methods.registry import METHODS
from mimkit.models.masked import check_masked_encoder
from mimkit.models.patches import pixel_mask


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
        self.stride = encoder.out_stride
        self.num_prefix_tokens = encoder.num_prefix_tokens
        self.mask_generator = BlockMaskGenerator(
            encoder.grid_size, encoder.patch_size, mask_patch_size, mask_ratio
        )
        self.mask_patch_size = mask_patch_size
        self.mask_ratio = self.mask_generator.mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = PixelShuffleHead(encoder.num_features, self.in_chans, self.stride)

    def _token_mask(self, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``[N, L]`` float token mask: drawn, or the caller's ``[N, L]`` / ``[N, gh, gw]`` checked."""
        n = images.shape[0]
        if mask is None:
            return self.mask_generator(n, device=images.device).flatten(1)
        return check_token_mask(mask.to(images.device), n, self.encoder.grid_size)

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
        loss = masked_l1(pred, images, pixel_mask(token_mask, self.patch_size, self.encoder.grid_size))
        return {"loss": loss, "pred": pred, "mask": token_mask}

    def training_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The trainer's entry point: ``batch = (images, labels)``; labels are ignored."""
        return self(batch[0])

    @torch.no_grad()
    def loss_baseline(self, batch: tuple[torch.Tensor, ...]) -> tuple[str, dict[str, torch.Tensor]]:
        """What the loss would be for a prediction that learned nothing: the data's mean colour, which is
        zero in the normalised space the L1 loss compares in (masks do not look at the pixels, so the mean
        over every pixel is the masked pixels' on average). The trainer shows the loss against it
        (:mod:`mimkit.engine.health`).

        Returns:
            ``(what the trivial prediction is, {"loss": scalar})``.
        """
        return "predicting the data's mean colour", {"loss": batch[0].float().abs().mean()}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """:func:`~mimkit.methods.panels.reconstruction_panels` in the input's (normalised) space.

        ``mask`` (``[N, L]`` or ``[N, gh, gw]``, 1 = masked) replaces the drawn one (any tokens, not only
        whole cells)."""
        out = self(images, mask=mask)
        mask = pixel_mask(out["mask"], self.patch_size, self.encoder.grid_size)
        return reconstruction_panels(images, out["pred"].float(), mask, out["loss"])
