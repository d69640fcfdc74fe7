"""The masked-encoder contract: what every method needs of an encoder, defined once.

MAE drops the masked tokens before the transformer (``ids_keep``); SimMIM and SiT replace them by a learned
mask token (``mask`` + ``mask_token``), before the position embedding is added. ViT and Swin implement
:class:`MaskedEncoder`; a method checks an encoder with :func:`check_masked_encoder`, and encoders replace
tokens with :func:`replace_masked_tokens`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

# attributes every masked encoder has (besides forward_encoder)
INTERFACE = ("patch_size", "grid_size", "img_size", "in_chans", "embed_dim")


@runtime_checkable
class MaskedEncoder(Protocol):
    """An encoder the pretraining methods can mask.

    Attributes:
        patch_size: side of a patch, in pixels.
        grid_size: the patch grid ``(H / p, W / p)``.
        img_size: the input ``(H, W)``.
        in_chans: image channels.
        embed_dim: width of the patch tokens.
        drops_tokens: ``forward_encoder`` accepts ``ids_keep`` (ViT yes, Swin no: its windows need every
            token).
    """

    patch_size: int
    grid_size: tuple[int, int]
    img_size: tuple[int, int]
    in_chans: int
    embed_dim: int
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
    """The one check of an encoder a method is given: the interface, and what the method needs beyond it.

    Args:
        encoder: the encoder.
        method: the method's name, for the message.
        drops_tokens: the method removes tokens (MAE).
        class_token: the method reads a class token (SiT's contrastive head).
        hint: what to use instead, appended to the message.

    Raises:
        ValueError: one line naming what the encoder lacks.
    """
    missing = [name for name in ("forward_encoder", *INTERFACE) if not hasattr(encoder, name)]
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
