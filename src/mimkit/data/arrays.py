"""What every file reader shares: the error a reader raises (and how a folder counts its skipped files by
the reasons' kinds), and the ``[H, W, C]`` layout a reader returns.

A module of its own so that the readers of each format (:mod:`mimkit.data.readers`,
:mod:`mimkit.data.dicom`) share them without importing each other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_KINDS_SHOWN = 6  # reasons counted by name in a skipped-files line; the rest summed


class ReadError(ValueError):
    """A file that cannot be read as an image; the message is the reason (the caller names the file).

    A folder's skipped files are counted by the reason's kind: its text up to the first ``" ("``, so a
    reason reads ``"kind (details)"``.
    """


def to_hwc(arr: np.ndarray, what: str = "array", guess_axis: bool = False) -> np.ndarray:
    """``[H, W]`` -> ``[H, W, 1]``; ``[H, W, C]`` as it is, or, with ``guess_axis`` (arrays that do not say
    their layout), ``[C, H, W]`` -> ``[H, W, C]`` when the first axis is shorter than both others."""
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise ReadError(f"{what} has shape {tuple(arr.shape)}; expected [H, W], [H, W, C] or [C, H, W]")
    if guess_axis and arr.shape[0] < min(arr.shape[1], arr.shape[2]):
        arr = np.moveaxis(arr, 0, 2)
    return arr


def reason_kind(path: str, reason: str) -> str:
    """What a skip reason says without its details: the file's name dropped, the text up to the first
    ``" ("`` (readers word their reasons ``"kind (details)"``), quoted names dropped."""
    reason = reason.removeprefix(f"{path}: ")
    kind = re.sub(r"'[^']*'|\"[^\"]*\"", "", reason.split(" (", 1)[0])
    return re.sub(r"\s+", " ", kind).strip(" :;,.") or reason


def skipped_by_reason(failures: Sequence[tuple[str, str]], where: str = "") -> str:
    """``"5 without pixel data (e.g. a.dcm), 3 multi-frame (e.g. b.dcm), ..."``: the skipped files
    counted by the kind of their reason (:func:`reason_kind`), most first, each with its first file (relative
    to ``where``)."""
    kinds: dict[str, list[str]] = {}
    for path, reason in failures:
        kinds.setdefault(reason_kind(path, reason), []).append(path)
    ranked = sorted(kinds.items(), key=lambda item: -len(item[1]))
    parts = []
    for kind, paths in ranked[:_KINDS_SHOWN]:
        example = Path(paths[0])
        example = example.relative_to(where) if where and example.is_relative_to(where) else example
        parts.append(f"{len(paths)} {kind} (e.g. {example})")
    rest = sum(len(paths) for _, paths in ranked[_KINDS_SHOWN:])
    return ", ".join(parts) + (f", {rest} for {len(ranked) - _KINDS_SHOWN} other reason(s)" if rest else "")
