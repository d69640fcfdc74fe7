"""Plain data (dicts, lists, numbers, strings) from configs and records, for JSON, YAML and hashing, and
the one to-pair helper; at the bottom of the package so that every layer may use them."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, TypeVar

T = TypeVar("T", int, float)


def plain(value: Any, sort_keys: bool = False) -> Any:
    """JSON- and YAML-able data: dataclasses as dicts, tuples as lists, paths as strings, recursively;
    ``sort_keys`` (and string keys) for a value that is hashed."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else value.items()
        return {(str(k) if sort_keys else k): plain(v, sort_keys) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [plain(v, sort_keys) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def pair(value: Any, name: str, number: type[T] = int) -> tuple[T, T]:
    """``7 -> (7, 7)``, ``[7, 9] -> (7, 9)``: one value or two, each an ``int`` >= 1 (a size such as
    ``(H, W)``) or, with ``number=float``, any number; anything else is a ValueError naming ``name``."""
    kinds = (int, float) if number is float else (int,)
    values = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    good = (isinstance(v, kinds) and not isinstance(v, bool) and (number is float or v >= 1) for v in values)
    if len(values) != 2 or not all(good):
        kind = "a number or a pair of numbers" if number is float else "a positive int or a pair [H, W]"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return number(values[0]), number(values[1])
