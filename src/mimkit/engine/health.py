"""Knowing whether a run works while it runs: its loss against a trivial baseline, and pictures.

**The baseline.** A loss means little alone: 0.43 is good for MAE's norm-pix MSE and poor for NT-Xent on a
batch of 8. So the trainer shows the loss against the loss of a prediction that learned nothing. The seam
is one optional method of the model, like ``on_train_step_end``::

    model.loss_baseline(batch) -> (what the trivial prediction is, {"loss": scalar, "loss_*": scalar})

called under ``no_grad`` on the first ``BASELINE_BATCHES`` (2) micro-batches of a session, exactly as
``training_step`` gets them (after the batch transform), with its random draws kept out of the training's.
The model knows its loss, so it knows its trivial prediction: zeros in the space the loss compares in
(MAE under norm-pix: each patch's mean, so just under 1.0; without norm-pix, and SimMIM and GMML under
L1: the data's mean colour, which normalisation makes zero; SiT adds ``ln(2M - 1)`` for embeddings at
chance; a classifier: ``ln(classes)``). Not each patch's own mean for the latter: a model that sees a
masked or corrupted patch cannot know it, so that would be a bar a learning model may never pass. The
trainer stays blind to which method it runs. A returned value rather than a key of ``training_step``'s
output: the baseline is needed once, not computed every step. A model without the method gets no baseline.

**Pictures.** Every ``train.picture_every_minutes`` of training, and once at the end, the trainer hands
a callable (``mimkit.viz.ReconstructionPictures`` for pretraining) the model and a fixed few images
of the session's first batch, and puts the PNG it writes into TensorBoard; the time spent is left out of
the budget, like evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger("mimkit")

BASELINE_BATCHES = 2  # micro-batches the baseline is averaged over (no pass over the data of its own)
# the loss reads as "learning" below 1 - HEALTH_MARGIN of the baseline, and as worse than it above
# 1 + HEALTH_MARGIN: two micro-batches of a few dozen images estimate the baseline to a few percent
HEALTH_MARGIN = 0.05
PICTURE_IMAGES = 4  # images in a picture taken during training: a few rows (1.2 s on 2 busy AMD EPYC cores)


def verdict(loss: float, baseline: float) -> str:
    """``"learning"`` when ``loss`` is clearly below ``baseline``, else what it says about the run."""
    if not (math.isfinite(loss) and baseline > 0):
        return "no verdict"
    ratio = loss / baseline
    if ratio < 1 - HEALTH_MARGIN:
        return f"{ratio:.0%} of it: learning"
    if ratio <= 1 + HEALTH_MARGIN:
        return "no better than that: not learning yet"
    return "worse than that: not learning yet"


class LossBaseline:
    """The loss of the model's trivial prediction, averaged over the first micro-batches of a session.

    Args:
        model: may have ``loss_baseline(batch)`` (see the module docstring); if not, nothing happens.
        device: the training device (its random generator is forked around the call).
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.hook = getattr(model, "loss_baseline", None)
        self.device = device
        self.meaning = ""
        self.images = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._batches = 0
        self.values: dict[str, float] | None = None  # set by :meth:`finish`, once

    def add(self, batch: Sequence[torch.Tensor]) -> None:
        """Add one more micro-batch's baseline (the first ``BASELINE_BATCHES`` only; no host sync)."""
        if self.hook is None or self._batches >= BASELINE_BATCHES or self.values is not None:
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # the training's draws stay its own
            self.meaning, values = self.hook(batch)
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value.detach().float()
        self._batches += 1
        self.images += batch[0].shape[0]

    def finish(self) -> dict[str, float] | None:
        """The baseline as numbers (a host sync: called at a logging step); None without one. Logs it once."""
        if self.values is None and self._batches:
            self.values = {f"baseline_{k}": float(v) / self._batches for k, v in self._sums.items()}
            log.info(
                "loss baseline %.4g: the loss of %s, from the first %d training images; a run that learns "
                "goes below it",
                self.values["baseline_loss"],
                self.meaning,
                self.images,
            )
        return self.values

    def describe(self, loss: float) -> str:
        """``"against 0.94 for predicting each patch's mean: 46% of it: learning"``, or '' without one."""
        if not self.values or "baseline_loss" not in self.values:
            return ""
        base = self.values["baseline_loss"]
        return f" against {base:.4g} for {self.meaning}: {verdict(loss, base)}"


class Pictures:
    """When to take a picture: every ``every_minutes`` of ``clock``, and at the end of a session.

    Args:
        draw: ``(model, images [n, C, H, W] on the device, step) -> path of the PNG written``.
        every_minutes: the interval; 0 turns pictures off.
        clock: seconds (the trainer's clock, so that tests can fake it).
    """

    def __init__(
        self,
        draw: Callable[[nn.Module, torch.Tensor, int], Path] | None,
        every_minutes: float,
        clock: Callable[[], float],
    ):
        self.draw = draw if every_minutes > 0 else None
        self.every_s = every_minutes * 60
        self.clock = clock
        self.images: torch.Tensor | None = None
        self.next_at = clock() + self.every_s
        self.last_step: int | None = None

    def capture(self, images: torch.Tensor) -> None:
        """Keep the first ``PICTURE_IMAGES`` images of the session's first batch, for every picture."""
        if self.draw is not None and self.images is None:
            self.images = images[:PICTURE_IMAGES].detach().clone()

    def due(self) -> bool:
        return self.draw is not None and self.images is not None and self.clock() >= self.next_at

    def take(self, model: nn.Module, step: int) -> Path | None:
        """Draw a picture of ``model`` at ``step`` (eval mode, no grad, its random draws kept out of the
        training's); returns the PNG's path. The caller puts the model back in train mode."""
        if self.draw is None or self.images is None or self.last_step == step:
            return None
        devices = [self.images.device] if self.images.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model.eval()
            path = self.draw(model, self.images, step)
        self.last_step, self.next_at = step, self.clock() + self.every_s
        return path
