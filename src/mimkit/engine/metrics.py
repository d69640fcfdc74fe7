"""Metrics written by the main process: JSON lines (``metrics.jsonl``), TensorBoard events, experiment
trackers (:mod:`mimkit.engine.trackers`), progress lines."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("mimkit")


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The plain numbers among ``values`` (what TensorBoard and the trackers can plot)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsWriter:
    """Appends one JSON object per call to ``run_dir/metrics.jsonl``; mirrors scalars to TensorBoard."""

    def __init__(
        self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True, trackers=None
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self.trackers = trackers  # mimkit.engine.trackers.Trackers: MLflow / W&B, or None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:
                log.warning(
                    "tensorboard is not installed: metrics go to metrics.jsonl only "
                    "(pip install 'mimkit[tensorboard]')"
                )

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in scalars(values).items():
                self._tb.add_scalar(key, value, step)
        if self.trackers is not None:
            self.trackers.log_metrics(step, values)

    def write_image(self, step: int, tag: str, path: str | os.PathLike) -> None:
        """Put the PNG at ``path`` into TensorBoard under ``tag`` (it is already in the run directory)."""
        if not self.enabled or self._tb is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
        self._tb.add_image(tag, pixels, step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


class LogProgress:
    """Progress as plain log lines, for logs that are files or pipes (where a tqdm bar is a ``\\r`` per step).

    The same three calls the trainer makes on a tqdm bar: ``update(n)``, ``set_postfix(**values)`` (once per
    log interval: it writes the line) and ``close()``.
    """

    def __init__(self, total: int, initial: int = 0):
        self.total, self.n = total, initial
        self._start_n, self._t0 = initial, time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        done = self.n - self._start_n
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (self.total - self.n) if done else float("nan")
        fields = " ".join(f"{k}={v}" for k, v in values.items())
        log.info("step %d/%d %s eta %s", self.n, self.total, fields, format_seconds(eta))

    def close(self) -> None:
        pass


def format_seconds(seconds: float) -> str:
    """``3725.0 -> '1:02:05'``; ``'?'`` when unknown."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
