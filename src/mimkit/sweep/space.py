"""What a sweep varies, and the pretraining config of each of its trials.

A command-line setting ``key=value`` is fixed; ``key=a,b,c`` (commas outside brackets) is an axis of
choices and ``key=low:high`` (or ``low:high:log``) a range, which only a search (``--trials N``) samples.
Values are YAML, as in ``mimkit pretrain``: ``train.betas=[0.9,0.95],[0.9,0.999]`` is an axis of two lists.

Each trial's config is a recipe (``--config``; several recipes are the presets of their methods, so that
``method.name=mae,simmim`` takes each method's own recipe) or the recipe chosen for a folder
(:mod:`mimkit.recipe`: its per-method choices are the presets there), then the fixed settings, then the
trial's values, then what the sweep owns (the run directory, the seed, the shared split file, the budget).
:func:`check` builds the config and the model of every point before any trial starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mimkit.data.splits import SPLIT_FILE
from mimkit.data.subsets import check_fraction
from mimkit.engine.config import PretrainConfig, load_config, parse_overrides, read_yaml
from mimkit.eval.linear import LinearProbeConfig
from mimkit.eval.recipe import FinetuneConfig, load_recipe
from mimkit.logs import quiet
from mimkit.pretrain import build_method
from mimkit.recipe import RECIPE_RECORD, choose

log = logging.getLogger("mimkit")

OWNED = ("output_dir", "train.seed", "data.split_file")  # set by the sweep for every trial
OBJECTIVES = ("knn", "linear", "finetune")


@dataclass(frozen=True)
class Axis:
    """One swept key: ``choices`` (YAML spellings, as typed) or a range ``[low, high]`` (log-uniform if
    ``log``; integers when both ends are)."""

    key: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def corners(self) -> list[Any]:
        """The values :func:`check` tries: every choice, or both ends of the range."""
        return list(self.choices) if not self.is_range else [self.low, self.high]


def _split_top(raw: str) -> list[str]:
    """``"a,[1,2],b"`` -> ``["a", "[1,2]", "b"]``: commas inside brackets or braces belong to the value."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(raw):
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    return parts + [raw[start:]]


def _number(text: str) -> float | int | None:
    value = read_yaml(text) if text.strip() else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_setting(item: str) -> Axis | None:
    """``key=a,b`` or ``key=low:high[:log]`` -> an :class:`Axis`; a plain ``key=value`` -> None (fixed)."""
    if "=" not in item:
        raise ValueError(f"setting {item!r} is not of the form key.sub=value or key.sub=a,b,c")
    key, raw = (s.strip() for s in item.split("=", 1))
    if not key:
        raise ValueError(f"setting {item!r} has an empty key")
    if key in OWNED:
        raise ValueError(f"{key} is set by the sweep for each trial (--out, --seeds); leave it out")
    parts = _split_top(raw)
    if len(parts) > 1:
        if any(not p.strip() for p in parts):
            raise ValueError(f"sweep {key}={raw}: an empty value in the list; give e.g. {key}=a,b,c")
        values = tuple(p.strip() for p in parts)
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if twice is not None:
            raise ValueError(f"sweep {key}={raw}: {twice} is listed twice; list each value once")
        return Axis(key, values)
    bounds = raw.split(":")
    if len(bounds) in (2, 3) and all(_number(b) is not None for b in bounds[:2]):
        if len(bounds) == 3 and bounds[2].strip() != "log":
            raise ValueError(f"sweep {key}={raw}: a range is low:high or low:high:log")
        low, high = _number(bounds[0]), _number(bounds[1])
        log_scale = len(bounds) == 3
        if not low < high or (log_scale and low <= 0):
            need = "0 < low < high" if log_scale else "low < high"
            raise ValueError(f"sweep {key}={raw}: a range needs {need}")
        return Axis(key, low=low, high=high, log=log_scale)
    if not raw:
        raise ValueError(f"sweep {key}=: no value; give one, or a list such as {key}=a,b,c")
    return None


@dataclass(frozen=True)
class EvalSpec:
    """What every trial is scored with, on the same held-out split.

    Attributes:
        pool: features of the frozen protocols (``token`` / ``avg``).
        k: neighbours of the kNN score.
        train_limit, test_limit: at most this many training / test images (None: all).
        linear: ``key=value`` settings of the linear probe (:class:`~mimkit.eval.linear.LinearProbeConfig`).
        finetune: label fractions to fine-tune at (empty: no fine-tuning).
        finetune_set: ``key=value`` settings of fine-tuning (:class:`~mimkit.eval.recipe.FinetuneConfig`).
        objective: what the sweep maximises: ``knn``, ``linear`` or ``finetune`` (the first fraction).
    """

    pool: str = "token"
    k: int = 20
    train_limit: int | None = None
    test_limit: int | None = None
    linear: tuple[str, ...] = ()
    finetune: tuple[float, ...] = ()
    finetune_set: tuple[str, ...] = ()
    objective: str = "linear"

    def __post_init__(self) -> None:
        for fraction in self.finetune:
            check_fraction(fraction)
        load_recipe(LinearProbeConfig, self.linear)  # a bad setting is named before any trial runs
        load_recipe(FinetuneConfig, self.finetune_set)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "finetune" and not self.finetune:
            raise ValueError("--objective finetune needs label fractions: --finetune 0.1 (for example)")


@dataclass(frozen=True)
class SweepSpec:
    """A whole sweep: what each trial starts from, what varies, the budget and the evaluation.

    Attributes:
        configs: YAML recipes; with several, each is the preset of its ``method.name``.
        folder: a folder of images (``mimkit pretrain DIR``): with ``configs`` the data of the recipes,
            without them the recipe chosen for it.
        overrides: fixed ``key=value`` settings of every trial.
        axes: the swept keys.
        seeds: every setting is pretrained (and evaluated) once per seed (``train.seed``).
        minutes, steps: the budget of each run: ``train.max_minutes`` (the schedule is fitted to it), or
            ``train.max_steps`` with no time budget (the recipe's schedule, cut there); None: the recipe's.
    """

    configs: tuple[str, ...] = ()
    folder: str | None = None
    overrides: tuple[str, ...] = ()
    axes: tuple[Axis, ...] = ()
    seeds: tuple[int, ...] = (0,)
    minutes: float | None = None
    steps: int | None = None
    eval: EvalSpec = field(default_factory=EvalSpec)

    def __post_init__(self) -> None:
        if not self.configs and not self.folder:
            raise ValueError("give a folder of images (mimkit sweep DIR ...) or recipes (--config C [C ...])")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct integers, got {list(self.seeds)}")
        keys = [a.key for a in self.axes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a key is swept twice: {', '.join(keys)}")
        if len(self.configs) > 1 and "method.name" not in keys:
            raise ValueError(
                "several recipes are the presets of their methods: sweep method.name too "
                f"(method.name={','.join(self.preset_methods())})"
            )

    @property
    def is_grid(self) -> bool:
        return not any(a.is_range for a in self.axes)

    def grid(self) -> list[dict[str, str]]:
        """Every point of a grid, as ``{key: value as typed}``."""
        return [
            dict(zip([a.key for a in self.axes], v, strict=True))
            for v in itertools.product(*(a.choices for a in self.axes))
        ]

    def preset_methods(self) -> list[str]:
        return list(_presets(self.configs))

    def identity(self) -> dict[str, Any]:
        """What a sweep directory must match to be continued: everything that makes trials comparable (the
        recipes' text included), not how many trials a search asks for."""
        texts = [hashlib.sha256(Path(c).read_bytes()).hexdigest()[:16] for c in self.configs]
        return {
            "configs": [[c, t] for c, t in zip(self.configs, texts, strict=True)],
            "folder": self.folder,
            "overrides": list(self.overrides),
            "axes": [[a.key, list(a.choices), a.low, a.high, a.log] for a in self.axes],
            "seeds": list(self.seeds),
            "minutes": self.minutes,
            "steps": self.steps,
            "eval": json.loads(json.dumps(self.eval.__dict__)),
        }


def _presets(configs: tuple[str, ...]) -> dict[str, str]:
    """``{method name: recipe}`` of the recipes (a method twice is an error naming both)."""
    found: dict[str, str] = {}
    for path in configs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path!r} does not exist")
        method = ((read_yaml(Path(path).read_text()) or {}).get("method") or {}).get("name", "mae")
        if method in found:
            raise ValueError(f"two recipes for method {method!r}: {found[method]} and {path}; keep one")
        found[method] = path
    return found


def _value(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def trial_config(
    spec: SweepSpec, params: dict[str, Any], seed: int, run_dir: str | Path, split_file: str | Path
) -> tuple[PretrainConfig, dict[str, Any]]:
    """The pretraining config of one run of a trial (``params``: the trial's values) and the records its run
    directory keeps (the folder recipe's reasons)."""
    settings = list(spec.overrides) + [f"{k}={_value(v)}" for k, v in params.items()]
    owned = [f"output_dir={run_dir}", f"train.seed={seed}"]
    if spec.minutes is not None:
        owned.append(f"train.max_minutes={spec.minutes}")
    if spec.steps is not None:  # the steps alone: not also a recipe's time budget
        owned += [f"train.max_steps={spec.steps}", "train.max_minutes=null"]
    data = parse_overrides(settings).get("data", {})
    if spec.folder or data.get("source") == "folder" or data.get("labeled_root"):
        owned.append(f"data.split_file={split_file}")  # the first run draws the held-out part, all reuse it
    if not spec.configs:
        cfg, record = choose(spec.folder, settings + owned)
        return cfg, {RECIPE_RECORD: record}
    presets = _presets(spec.configs)
    method = params.get("method.name", next(iter(presets)))
    if method not in presets:
        raise ValueError(
            f"method.name={method} has no recipe: give one whose method is {method} to --config too "
            f"(the recipes given are for {', '.join(presets)})"
        )
    where = ["data.source=folder", f"data.root={spec.folder}"] if spec.folder else []
    return load_config(presets[method], where + settings + owned), {}


def _points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The points :func:`check` builds: the whole grid, or each axis's corners with the others at their
    first value (a search)."""
    if spec.is_grid:
        return spec.grid() or [{}]
    first = {a.key: a.corners()[0] for a in spec.axes}
    return [{**first, a.key: v} for a in spec.axes for v in a.corners()]


def check(spec: SweepSpec, out: str | Path) -> int:
    """Build the config and the model of every point (:func:`_points`) before any trial starts: a key that
    does not exist or a value of the wrong type is a ``ValueError`` naming the setting. Returns the points.

    Logs of the folder recipe are quiet while it runs (each point would print its plan).
    """
    seen: set[str] = set()
    points = _points(spec)
    with quiet():
        for params in points:
            what = " ".join(f"{k}={_value(v)}" for k, v in params.items()) or "the recipe"
            try:
                cfg, _ = trial_config(
                    spec, params, spec.seeds[0], Path(out) / "check", Path(out) / SPLIT_FILE
                )
                if cfg.data.root and not Path(cfg.data.root).expanduser().exists():
                    raise ValueError(f"data.root {cfg.data.root!r} does not exist")
                model = json.dumps(
                    [cfg.encoder, cfg.method, cfg.data.img_size, cfg.data.channels], default=str
                )
                if model not in seen:  # each distinct model once; built on the CPU, small models take ms
                    seen.add(model)
                    size = cfg.data.img_size
                    stats = None
                    if size is not None and isinstance(cfg.data.channels, int):
                        pair = [size, size] if isinstance(size, int) else list(size)
                        bands = cfg.data.channels
                        stats = {
                            "img_size": pair,
                            "channels": bands,
                            "mean": [0.0] * bands,
                            "std": [1.0] * bands,
                        }
                    with torch.device("cpu"):
                        build_method(cfg, stats=stats)
            except (ValueError, TypeError) as err:
                raise ValueError(f"sweep {what}: {err}") from None
    return len(points)
