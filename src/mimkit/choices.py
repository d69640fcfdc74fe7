"""A plan of config values, each with its reason, the table that prints it and the config dict it makes:
what the pretraining recipe (``mimkit.recipe``) and the fine-tuning recipe (:mod:`mimkit.eval.planner`)
show and record. At the bottom of the package so that both layers may use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Choice:
    """One planned config value and why."""

    key: str
    value: Any
    reason: str


def table(choices: list[Choice], given: dict[str, Any]) -> str:
    """The plan as printed: key, value, reason; a key the user set (``given``, flat dotted keys) says so."""
    rows = [("key", "value", "why")]
    for c in choices:
        if c.key in given:
            rows.append((c.key, repr(given[c.key]), "set on the command line"))
        else:
            rows.append((c.key, repr(c.value), c.reason))
    width = [max(len(r[i]) for r in rows) for i in (0, 1)]
    return "\n".join(f"  {k:<{width[0]}}  {v:<{width[1]}}  {w}" for k, v, w in rows)


def as_overrides(choices: list[Choice]) -> dict[str, Any]:
    """``{"data": {"img_size": 64, ...}, ...}``: the choices as a nested config dict."""
    tree: dict[str, Any] = {}
    for choice in choices:
        node = tree
        *parents, leaf = choice.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = choice.value
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"blr": 1}}`` -> ``{"train.blr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
