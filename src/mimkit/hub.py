"""``save_pretrained`` / ``from_pretrained`` on every method and encoder, the way transformers and timm
users expect: a directory of ``config.json`` (what :func:`~mimkit.create_encoder` and
:func:`~mimkit.create_method` were called with) and ``model.safetensors``.

Local directories only: mimkit never downloads. Written here rather than through huggingface_hub's
``PyTorchModelHubMixin``: that mixin rebuilds a model by calling its class with the saved init arguments,
and a method's first argument is an encoder module, not a JSON value; the factories already are the one
place that knows how to build each model from names and options. Pushing a saved directory to a hub
stays the user's choice (``huggingface_hub.upload_folder``).

Every model inherits this mixin, so it sits below them and imports nothing above it. Reading a directory
back needs what sits above: the factories (a saved config names an encoder and a method) and, for a run
directory or a training checkpoint, the pretraining config. The top-level package hands that reader in
(``mimkit/__init__.py`` sets :attr:`Pretrained.reader` to :func:`mimkit.pretrain.open_model`), as a model
declares its FSDP units for the engine: the lower layer names the seam, a higher one fills it.
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
    #: ``path -> model``, what :meth:`from_pretrained` reads with; set by ``mimkit/__init__.py``
    reader: ClassVar[Callable[[Path], nn.Module]]

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


def saved_config(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` of a :meth:`~Pretrained.save_pretrained` directory; None when ``path`` holds no
    config and weights.

    Raises:
        ValueError: a config and weights that are not mimkit's (a transformers or timm directory).
    """
    if not ((path / CONFIG).is_file() and (path / WEIGHTS).is_file()):
        return None
    config = json.loads((path / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a mimkit save_pretrained directory (no {FORMAT!r} in config.json)")
    return config


def record(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Note on ``model`` how it was built (what the factories call)."""
    model.mimkit_config = config
    return model
