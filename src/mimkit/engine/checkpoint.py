"""Atomic checkpoints and RNG state capture, so that a killed run resumes exactly."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"
TEMP = ".tmp-"  # save_atomic writes NAME through .NAME.tmp-PID


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors.

    Only tensors and plain containers are unpickled: a file that holds code (a hostile or foreign pickle)
    is refused, as is a truncated or non-torch file, with a ``ValueError`` naming the file and the first
    line of torch's reason instead of its multi-line text.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, truncated zip, wrong format, ...
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        reason = first.removeprefix("Weights only load failed.").strip() or type(err).__name__
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: {type(err).__name__}: {reason[:200]} "
            "(mimkit loads tensors only, never code)"
        ) from None


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The run directory's latest checkpoint, if any."""
    path = Path(run_dir) / LAST
    return path if path.is_file() else None


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
