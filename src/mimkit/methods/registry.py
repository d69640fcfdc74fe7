"""``create_method("mae", encoder=...)``: the registry of pretraining methods."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mimkit.models import create_encoder
from mimkit.registry import Registry

METHODS = Registry("method")


def create_method(name: str, encoder: nn.Module | str, **kwargs: Any) -> nn.Module:
    """Build a pretraining method around an encoder.

    Args:
        name: one of :func:`list_methods` (``"mae"``, ...).
        encoder: an encoder module, or a registered encoder name (built with defaults).
        **kwargs: the method's own options (``mask_ratio``, ``decoder_dim``, ...).
    """
    factory = METHODS.get(name)
    if isinstance(encoder, str):
        encoder = create_encoder(encoder)
    try:
        return factory(encoder=encoder, **kwargs)
    except TypeError as err:  # an unknown keyword: say which method and which option
        raise ValueError(f"bad option for method {name!r}: {err}") from None


def list_methods() -> list[str]:
    return METHODS.names()
