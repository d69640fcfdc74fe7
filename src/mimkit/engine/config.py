"""Configs: YAML recipes merged with dotted command-line overrides, validated strictly.

``load_config("configs/mae_fashion_mnist.yaml", ["train.epochs=5", "method.mask_ratio=0.6"])``.
An unknown key anywhere is a ``ValueError`` that names it (and suggests the closest valid key).
Numbers are read as YAML 1.2 reads them: ``1e-3`` is a float (PyYAML alone follows YAML 1.1, where a float
needs a dot, ``1.0e-3``, and ``1e-3`` is the string ``"1e-3"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from mimkit.data.config import DataConfig
from mimkit.engine.precision import PRECISIONS

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (``1e-3``, ``5E4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: Any) -> Any:
    """YAML text (or a file object) -> Python values, safe, with YAML 1.2 floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


STRATEGIES = ("ddp", "fsdp")  # train.strategy under torchrun (mimkit.engine.dist.wrap)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run (shared by pretraining and fine-tuning)."""

    epochs: int = 10
    batch_size: int = 256  # per process and per micro-step
    accum_steps: int = 1  # gradient accumulation: effective batch = batch_size * accum_steps * world_size
    blr: float = 1.5e-4  # base lr; lr = blr * effective_batch / 256 unless lr is given
    lr: float | None = None
    min_lr: float = 0.0
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = None
    # auto: bf16 where native, fp16 + gradient scaler on GPUs without bf16, fp32 otherwise (engine.precision)
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: bool = False  # torch.compile the training step (inductor; on the CPU it needs a C++ compiler)
    # under torchrun: ddp (replicated model) or fsdp (parameters, gradients, optimizer state sharded: FSDP2)
    strategy: str = "ddp"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 20  # optimizer steps between logged metrics (the only host syncs)
    save_every_steps: int = 0  # 0: checkpoint at the end of each epoch only
    max_steps: int | None = None  # stop (and checkpoint) after this many optimizer steps in total
    # wall-clock budget of the training loop: the schedule is fitted to it after a few timed steps
    max_minutes: float | None = None
    # a reconstruction picture into run_dir/pictures and TensorBoard every so many minutes of training, and at
    # the end (pretraining); 0: none
    picture_every_minutes: float = 2.0
    resume: bool = True  # continue from the run directory's last checkpoint if there is one
    progress: bool = True
    tensorboard: bool = True
    # experiment trackers besides metrics.jsonl / TensorBoard (mimkit.engine.trackers): a local MLflow store
    # directory (or tracking URI), a W&B project (offline unless WANDB_MODE says otherwise)
    mlflow: str | None = None
    wandb: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accum_steps", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
        for name in ("compile", "resume", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        for name in ("blr", "min_lr", "weight_decay", "warmup_epochs"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"train.clip_grad must be > 0 or null, got {self.clip_grad!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1 or null, got {self.max_steps!r}")
        minutes = self.max_minutes
        if minutes is not None and (
            isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0
        ):
            raise ValueError(f"train.max_minutes must be a number > 0 or null, got {self.max_minutes!r}")
        every = self.picture_every_minutes
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0:
            raise ValueError(
                f"train.picture_every_minutes must be a number >= 0 (0: no pictures), got {every!r}"
            )
        for name in ("mlflow", "wandb"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"train.{name} must be a non-empty string or null, got {value!r}")
        if self.save_every_steps < 0:
            raise ValueError(f"train.save_every_steps must be >= 0, got {self.save_every_steps!r}")


@dataclass
class OnlineKNNConfig:
    """kNN accuracy on a labeled subset every ``every`` epochs of pretraining (0: off)."""

    every: int = 0
    k: int = 20
    pool: str = "token"
    bank_size: int | None = 5000
    query_size: int | None = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 0:
            raise ValueError(f"online_knn.every must be an integer >= 0, got {self.every!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"online_knn.k must be a positive integer, got {self.k!r}")
        if self.pool not in ("token", "avg"):
            raise ValueError(f"online_knn.pool must be 'token' or 'avg', got {self.pool!r}")


@dataclass
class PretrainConfig:
    """A pretraining recipe: encoder, method, data, training, and where the run lives.

    ``init_weights``: start the encoder from a file's weights (a mimkit run or checkpoint, a reference MAE /
    SimMIM file, a timm-style state dict or a ``.safetensors`` export: its encoder part, strictly; the
    decoder and heads start fresh). ``adapt_channels``: a file trained on another channel count is loaded
    with its patch embedding adapted (:func:`mimkit.weights.adapt_patch_embed`) instead of refused.
    """

    encoder: dict[str, Any] = field(default_factory=lambda: {"name": "vit_tiny_patch4_28"})
    method: dict[str, Any] = field(default_factory=lambda: {"name": "mae"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    online_knn: OnlineKNNConfig = field(default_factory=OnlineKNNConfig)
    output_dir: str = "runs/pretrain"
    init_weights: str | None = None
    adapt_channels: bool = False

    def __post_init__(self) -> None:
        weights = self.init_weights
        if weights is not None and (not isinstance(weights, str) or not weights):
            raise ValueError(f"init_weights must be a file path or null, got {self.init_weights!r}")
        if not isinstance(self.adapt_channels, bool):
            raise ValueError(f"adapt_channels must be true or false, got {self.adapt_channels!r}")
        for part in ("encoder", "method"):
            value = getattr(self, part)
            if not isinstance(value, dict) or not isinstance(value.get("name"), str):
                raise ValueError(
                    f"config section {part!r} needs a 'name' (e.g. {part}.name=...), got {value!r}"
                )


def named_options(section: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A named section (``encoder``, ``method``): ``{"name": n, **options}`` -> ``(n, options)``."""
    return section["name"], {k: v for k, v in section.items() if k != "name"}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-able dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _build(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Build a dataclass from a dict, recursing into dataclass fields; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or 'top level'!r} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f"; did you mean {where + close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown config key {where + key!r}{hint} (valid under {where[:-1] or 'top level'}: "
            f"{', '.join(fields)})"
        )
    hints = typing.get_type_hints(cls)  # the annotations as types, whichever way they are spelled
    kwargs = {}
    for key, value in values.items():
        ftype = hints[key]
        if dataclasses.is_dataclass(ftype):
            kwargs[key] = _build(ftype, value or {}, f"{where}{key}.")
        else:
            kwargs[key] = _number(value, ftype, where + key)
    return cls(**kwargs)


def _number(value: Any, ftype: Any, key: str) -> Any:
    """A ``float`` field's value as a float (ints welcome); anything else there is an error naming the key.

    ``ftype`` is the field's type: ``float``, or an optional float (``float | None``, ``Optional[float]``),
    which also takes ``None``; fields of other types pass through.
    """
    optional = set(typing.get_args(ftype)) == {float, type(None)}
    if not (ftype is float or optional) or (value is None and optional):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config key {key!r} must be a number, got {value!r}")
    return float(value)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", "encoder.img_size=[32, 32]"]`` -> nested dict; values parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ValueError(f"override {item!r} has an empty key")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with another override of {part!r}")
        try:
            node[parts[-1]] = read_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            problem = str(getattr(err, "problem", None) or err).strip()
            raise ValueError(f"override {item!r}: the value is not valid YAML ({problem})") from None
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: ``update`` wins; nested dicts are merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | os.PathLike | None, overrides: list[str] | None = None, cls: type[T] = PretrainConfig
) -> T:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply dotted overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        with open(path) as f:
            try:
                values = read_yaml(f) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    values = merge(values, parse_overrides(overrides or []))
    if not isinstance(values.get("encoder", {}), dict) or not isinstance(values.get("method", {}), dict):
        raise ValueError("config sections 'encoder' and 'method' must be mappings with a 'name'")
    # dict-valued sections (encoder, method) start from the defaults, so an override adds to them
    defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
    for key, default in defaults.items():
        if isinstance(default, dict) and isinstance(values.get(key), dict):
            values[key] = merge(default, values[key]) if "name" not in values[key] else values[key]
    return _build(cls, values, "")


def save_config(cfg: Any, path: str | os.PathLike, header: str = "") -> None:
    """Write ``cfg`` as YAML (readable by :func:`load_config`), after ``header`` as comment lines."""
    with open(path, "w") as f:
        f.writelines(f"# {line}\n" for line in header.splitlines())
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
