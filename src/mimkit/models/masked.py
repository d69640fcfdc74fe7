"""The masked-encoder contract: what every method needs of an encoder, defined once.

MAE drops the masked tokens before the transformer (``ids_keep``); SimMIM and SiT replace them by a learned
mask token (``mask`` + ``mask_token``), before the position embedding is added. ViT and Swin implement
:class:`MaskedEncoder`, which declares everything a method reads of its encoder; a method checks its encoder
with :func:`check_masked_encoder` when it is built, and encoders replace tokens with
:func:`replace_masked_tokens`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class MaskedEncoder(Protocol):
    """An encoder the pretraining methods can mask: every attribute a method reads of its encoder.

    Attributes:
        patch_size: side of a patch, in pixels.
        grid_size: the patch grid ``(H / p, W / p)``.
        img_size: the input ``(H, W)``.
        in_chans: image channels.
        embed_dim: width of the patch tokens (what a mask token replaces).
        num_features: width of the output tokens (a Swin's last stage's; a ViT's ``embed_dim``).
        out_stride: total downsampling of the output tokens, in pixels (a ViT's ``patch_size``).
        num_prefix_tokens: leading non-patch tokens of the output (1 for a ViT's class token, 0 for Swin).
        drops_tokens: ``forward_encoder`` accepts ``ids_keep`` (ViT yes, Swin no: its windows need every
            token).
    """

    patch_size: int
    grid_size: tuple[int, int]
    img_size: tuple[int, int]
    in_chans: int
    embed_dim: int
    num_features: int
    out_stride: int
    num_prefix_tokens: int
    drops_tokens: bool

    def forward_encoder(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def check_masked_encoder(
    encoder: object, method: str, drops_tokens: bool = False, class_token: bool = False, hint: str = ""
) -> None:
    """The one check of an encoder a method is given: the members of :class:`MaskedEncoder`, and what the
    method needs beyond them.

    Args:
        encoder: the encoder.
        method: the method's name, for the message.
        drops_tokens: the method removes tokens (MAE).
        class_token: the method reads a class token (SiT's contrastive head).
        hint: what to use instead, appended to the message.

    Raises:
        ValueError: one line naming the encoder's class and what it lacks.
    """
    members = ("forward_encoder", *MaskedEncoder.__annotations__)  # declared once, above
    missing = [name for name in members if not hasattr(encoder, name)]
    if drops_tokens and not getattr(encoder, "drops_tokens", False):
        missing.append("token dropping (ids_keep)")
    if class_token and not hasattr(encoder, "cls_token"):
        missing.append("a class token")
    if missing:
        raise ValueError(
            f"{method} needs an encoder with the masked-encoder interface; {type(encoder).__name__} lacks "
            f"{', '.join(missing)}" + (f"; {hint}" if hint else "")
        )


def replace_masked_tokens(
    tokens: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor | None
) -> torch.Tensor:
    """``tokens`` [N, L, D] with the positions where ``mask`` [N, L] is 1 replaced by ``mask_token``
    [1, 1, D] (SimMIM's ``x * (1 - w) + t * w``, so a soft mask blends)."""
    if mask_token is None:
        raise ValueError(f"forward_encoder(mask=...) needs a mask_token of shape [1, 1, {tokens.shape[-1]}]")
    if tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise ValueError(f"mask must be [N, L] = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
    w = mask.unsqueeze(-1).to(tokens.dtype)  # [N, L, 1]
    return tokens * (1.0 - w) + mask_token.to(tokens.dtype) * w
