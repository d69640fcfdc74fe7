"""Named encoder sizes: ``create_encoder("vit_tiny_patch4_28", depth=6)``."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mimkit.hub import record
from mimkit.models.vit import VisionTransformer
from mimkit.registry import Registry

ENCODERS = Registry("encoder")

# name -> keyword arguments of the encoder class. The patch-4 variants are for 28x28 / 32x32 images, the
# patch-7 one for 28x28 (16 tokens: the grid SiT's Fashion-MNIST recipe trains on).
_VIT_SIZES: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
    "vit_tiny_patch4_28": dict(embed_dim=192, depth=12, num_heads=3, patch_size=4, img_size=28, in_chans=1),
    "vit_tiny_patch7_28": dict(embed_dim=192, depth=12, num_heads=3, patch_size=7, img_size=28, in_chans=1),
    "vit_small_patch4_28": dict(embed_dim=384, depth=12, num_heads=6, patch_size=4, img_size=28, in_chans=1),
    "vit_tiny_patch4_32": dict(embed_dim=192, depth=12, num_heads=3, patch_size=4, img_size=32),
    "vit_small_patch4_32": dict(embed_dim=384, depth=12, num_heads=6, patch_size=4, img_size=32),
}


def _vit_factory(defaults: dict[str, Any]):
    def factory(**overrides: Any) -> VisionTransformer:
        kwargs = {"patch_size": 16, "img_size": 224, "in_chans": 3, **defaults, **overrides}
        return VisionTransformer(**kwargs)

    factory.encoder_class = VisionTransformer
    return factory


for _name, _defaults in _VIT_SIZES.items():
    ENCODERS.register(_name)(_vit_factory(_defaults))


_ENCODER_OPTIONS = {
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "drop_path_rate",
    "global_pool",
    "num_classes",
    "fc_norm",
    "fused_attn",
}


def create_encoder(name: str, **overrides: Any) -> nn.Module:
    """Build a named encoder, with overrides of its size or input.

    Args:
        name: one of :func:`list_encoders` (e.g. ``"vit_base_patch16"``, ``"vit_tiny_patch4_28"``).
        **overrides: ``img_size`` (int or ``(H, W)``), ``patch_size``, ``in_chans``, ``embed_dim``,
            ``depth``, ``num_heads``, ``drop_path_rate``, ...

    Raises:
        ValueError: unknown name or option.
    """
    factory = ENCODERS.get(name)
    unknown = sorted(set(overrides) - _ENCODER_OPTIONS - getattr(factory, "extra_options", set()))
    if unknown:
        raise ValueError(
            f"unknown encoder option(s) {unknown} for {name!r}; valid: {', '.join(sorted(_ENCODER_OPTIONS))}"
        )
    return record(factory(**overrides), {"encoder": {"name": name, **overrides}})


def list_encoders() -> list[str]:
    return ENCODERS.names()


def encoder_class(name: str) -> type[nn.Module] | None:
    """The class a named encoder is built as (``VisionTransformer``, ``SwinTransformer``); None when its
    factory was registered without saying (an encoder added by user code)."""
    return getattr(ENCODERS.get(name), "encoder_class", None)
