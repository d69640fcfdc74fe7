"""What every file reader shares: the error a reader raises, and the ``[H, W, C]`` layout it returns.

A module of its own so that the readers of each format (:mod:`mimkit.data.readers`,
:mod:`mimkit.data.dicom`) share them without importing each other.
"""

from __future__ import annotations

import numpy as np


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
