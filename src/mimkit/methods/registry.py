"""``create_method("mae", encoder=...)``: the registry of pretraining methods."""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from mimkit.hub import record
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
    # unknown options are found from the signature, so a TypeError raised inside a constructor is not
    # mistaken for one
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = sorted(k for k in params if k != "encoder")
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {name!r}; valid: {', '.join(valid)}")
    if isinstance(encoder, str):
        encoder = create_encoder(encoder)
    try:
        method = factory(encoder=encoder, **kwargs)
    except TypeError as err:  # a factory taking **kwargs (a preset) passed on an option nobody takes
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"unknown option for method {name!r}: {err}") from None
    built = getattr(encoder, "mimkit_config", None)
    return record(method, {**built, "method": {"name": name, **kwargs}}) if built else method


def list_methods() -> list[str]:
    return METHODS.names()
