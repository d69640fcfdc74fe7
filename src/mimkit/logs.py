"""Logging helpers; at the bottom of the package so that every layer may use them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Within the block, the loggers ``names`` (default: mimkit's) pass only records of ``level`` and above;
    their own levels come back after it, whatever happens in it."""
    loggers = [logging.getLogger(name) for name in names or ("mimkit",)]
    before = [q.level for q in loggers]
    for q in loggers:
        q.setLevel(level)
    try:
        yield
    finally:
        for q, was in zip(loggers, before, strict=True):
            q.setLevel(was)
