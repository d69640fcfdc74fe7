"""``save_pretrained`` / ``from_pretrained`` on every method and encoder, the way transformers and timm
users expect: a directory of ``config.json`` (what :func:`~mimkit.create_encoder` and
:func:`~mimkit.create_method` were called with) and ``model.safetensors``.

Local directories only: mimkit never downloads. Written here rather than through huggingface_hub's
``PyTorchModelHubMixin``: that mixin rebuilds a model by calling its class with the saved init arguments,
and a method's first argument is an encoder module, not a JSON value; the factories already are the one
place that knows how to build each model from names and options. Pushing a saved directory to a hub
stays the user's choice (``huggingface_hub.upload_folder``).

Every model inherits this mixin, so it imports nothing above the models. Reading back needs what sits
above them (the factories; a run's pretraining config), so the top-level package hands the reader in:
``mimkit/__init__.py`` sets :attr:`Pretrained.reader` to :func:`mimkit.pretrain.open_model`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch.nn as nn

from mimkit.plain import plain

CONFIG, WEIGHTS = "config.json", "model.safetensors"
FORMAT = "mimkit-pretrained/1"

M = TypeVar("M", bound="Pretrained")


class Pretrained:
    """Mixed into mimkit's encoders and methods; the factories record how each was built
    (``mimkit_config``)."""

    mimkit_config: dict[str, Any] | None = None
    reader: ClassVar[Callable[[Path], nn.Module]]  # path -> model, for from_pretrained: mimkit/__init__.py

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        if self.mimkit_config is None:
            raise ValueError(
                f"this {type(self).__name__} was not built by mimkit.create_encoder / create_method, so its "
                "configuration is unknown; build it with those to save it"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        assert isinstance(self, nn.Module)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS), metadata={"format": "pt", "producer": "mimkit"})
        config = {"format": FORMAT, **plain(self.mimkit_config)}
        (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls: type[M], path: str | os.PathLike) -> M:
        """Build and load (strictly) a model saved with :meth:`save_pretrained`; a mimkit run directory or
        checkpoint works too (its method, or its encoder when called on an encoder class). In eval mode.

        Raises:
            FileNotFoundError: nothing there; ValueError: a directory or run of another kind of model.
        """
        model = Pretrained.reader(Path(path))
        if not isinstance(model, cls) and isinstance(getattr(model, "encoder", None), cls):
            model = model.encoder
        if not isinstance(model, cls):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model.eval()


def record(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Note on ``model`` how it was built (what the factories call)."""
    model.mimkit_config = config
    return model
