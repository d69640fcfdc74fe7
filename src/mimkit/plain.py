"""Plain data (dicts, lists, numbers, strings) from configs and records, for JSON, YAML and hashing; at the
bottom of the package so that every layer may use it."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


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
