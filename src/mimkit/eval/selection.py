"""Fine-tuning that answers for itself: a held-out part of its own training labels, the best checkpoint by
it, and the linear probe of the encoder it started from, scored on the same images.

- :func:`holdout_parts` holds out ``holdout`` of each class of the *training* set (at least one image, at
  most ``holdout_max``), drawn with the seed as every per-class subset is (``mimkit.data.subsets``). The
  test set is never looked at before the end.
- :class:`BestOnHeldOut` is a trainer callback: top-1 on the held-out images at each epoch end (one host
  sync per epoch, none per step), the best weights kept in memory and in ``best.pt`` next to ``last.pt``,
  written atomically as the trainer writes its checkpoints. Ties go to the later epoch (on a small held-out
  part ties are common, and the later weights have seen more of the schedule).
- :func:`probe_baseline` trains the linear probe (:func:`~mimkit.eval.linear.fit_probe`) on the frozen,
  mean-pooled features of the classifier's encoder *before* fine-tuning, on the same fit part, and scores it
  on the same held-out and test images: the bar a fine-tuned classifier must clear, since it starts from
  those features.

Where fine-tuning ends below its probe, :func:`below_probe_note` says so in one line with the fixes. The
fine-tuned classifier is kept all the same (its probe's head is not swapped in): the probe reads frozen
features through a BatchNorm that the classifier does not have, so swapping would hand back a model other
than the one asked for, without the fine-tuning's weights; the user chooses with the numbers in hand.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mimkit.data.datasets import ImageDataset
from mimkit.data.loader import build_loader
from mimkit.data.subsets import holdout_split, subset_dataset
from mimkit.engine import checkpoint as ckpt
from mimkit.eval.features import FeaturePass
from mimkit.eval.frozen import Encoder, Split, features
from mimkit.eval.linear import LinearProbeConfig, fit_probe
from mimkit.eval.records import chance_note

log = logging.getLogger("mimkit")

BEST = "best.pt"  # the run's checkpoint chosen on its held-out images, next to last.pt
PROBE_RECORD = "probe.json"


def class_counts(dataset: ImageDataset) -> dict[str, int]:
    """Images per class of a labeled dataset, by class name (classes without an image included, at 0)."""
    counts = torch.bincount(dataset.labels[dataset.labels >= 0], minlength=dataset.num_classes)
    return {name: int(n) for name, n in zip(dataset.classes, counts.tolist(), strict=True)}


def holdout_parts(
    train_set: ImageDataset, holdout: float, holdout_max: int, seed: int
) -> tuple[ImageDataset, ImageDataset | None]:
    """``(fit, held)``: ``round(holdout * n_c)`` images of each class ``c`` held out, at least 1 and at most
    ``holdout_max``; ``holdout = 0``: ``(train_set, None)``.

    Raises:
        ValueError: a class has fewer than 2 training images (one to hold out, one to train on).
    """
    if holdout == 0:
        return train_set, None
    counts = class_counts(train_set)
    short = {name: n for name, n in counts.items() if n < 2}
    if short:
        name, n = next(iter(short.items()))
        raise ValueError(
            f"class {name!r} has {n} training image(s): fine-tuning's held-out split (holdout={holdout}) "
            f"needs 2 per class, one to hold out and one to train on ({len(short)} class(es) short); add "
            "images, or holdout=0 to keep the last checkpoint without a held-out check"
        )
    fit_idx, held_idx = holdout_split(train_set.labels, holdout, seed, cap=holdout_max)
    return subset_dataset(train_set, fit_idx), subset_dataset(train_set, held_idx)


class BestOnHeldOut:
    """``on_epoch_end(epoch, model) -> {"holdout_top1": %}``; keeps the best weights (``best.pt``).

    Args:
        held_set: the held-out images (labeled, uint8).
        transform: uint8 batch -> normalised batch, on ``device``.
        device: where the model runs.
        run_dir: where ``best.pt`` goes.
        record: more entries for ``best.pt`` (config, identity, grid size: what ``last.pt`` has).
        resume: the run resumes: a ``best.pt`` of its earlier sessions is the one to beat.
        write: this process writes ``best.pt`` (the main one).
        batch_size: of the held-out evaluation.
    """

    def __init__(
        self,
        held_set: ImageDataset,
        transform: nn.Module,
        device: torch.device,
        run_dir: str | os.PathLike,
        record: dict[str, Any] | None = None,
        resume: bool = True,
        write: bool = True,
        batch_size: int = 512,
    ):
        self.loader = build_loader(held_set, min(batch_size, len(held_set)), shuffle=False, drop_last=False)
        self.transform, self.device, self.write = transform, device, write
        self.path = Path(run_dir, BEST)
        self.record = dict(record or {})
        self.best_top1, self.best_epoch = -1.0, 0
        self.state: dict[str, torch.Tensor] | None = None  # the best weights of this session
        self.images = len(held_set)
        if resume and self.path.is_file() and ckpt.last_checkpoint(run_dir) is not None:
            saved = ckpt.load_checkpoint(self.path)
            self.best_top1, self.best_epoch = float(saved["holdout_top1"]), int(saved["epoch"])

    def on_epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        top1 = model.accuracy(self.loader, self.transform, self.device)
        if top1 >= self.best_top1:  # ties: the later epoch
            self.best_top1, self.best_epoch = top1, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.write:
                weights = {k: v.cpu() for k, v in self.state.items()}
                entry = {**self.record, "model": weights, "epoch": epoch, "holdout_top1": top1}
                ckpt.save_atomic(entry, self.path)
        return {"holdout_top1": top1}

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into ``model`` (this session's, else ``best.pt`` of an earlier one).

        Returns:
            Whether there were any (False: no epoch ended, the model keeps its weights).
        """
        state = self.state
        if state is None and self.best_epoch > 0:
            state = ckpt.load_checkpoint(self.path)["model"]
        if state is None:
            return False
        model.load_state_dict(state)
        return True


def probe_baseline(
    encoder: nn.Module,
    fit_set: ImageDataset,
    held_set: ImageDataset | None,
    test_set: ImageDataset,
    run_dir: str | os.PathLike,
    run: FeaturePass,
    cfg: LinearProbeConfig,
) -> dict[str, Any] | None:
    """The linear probe of ``encoder``'s frozen mean-pooled features: fit on ``fit_set`` (its lr chosen on a
    part of it), scored on ``held_set`` and ``test_set``. Read back from ``run_dir/probe.json`` if there.

    Returns:
        ``{"holdout_top1": % or None, "test_top1": %, "blr", "fit_images", "grid"}`` (``grid``: the base lrs
        tried and where the search stopped, :func:`~mimkit.eval.linear.fit_probe`), or None (said in one
        line) when ``fit_set`` is too small for the probe to hold out its own part and still fit on some.
    """
    path = Path(run_dir, PROBE_RECORD)
    if path.is_file():
        return json.loads(path.read_text())
    if holdout_split(fit_set.labels, cfg.holdout, cfg.seed)[0].numel() == 0:
        log.info(
            "no linear-probe comparison: the probe holds out %g of each class (at least 1) to choose its lr, "
            "and %d training image(s) leave it none to fit on",
            cfg.holdout,
            len(fit_set),
        )
        return None
    start = Encoder("start", encoder)
    fit_x, fit_y = features(start, Split(fit_set), run, ("avg",))["avg"]
    probe, head, chosen = fit_probe(fit_x, fit_y, Path(run_dir, "probe"), cfg, fit_set.num_classes)

    def top1(dataset: ImageDataset | None) -> float | None:
        if dataset is None:
            return None
        x, y = features(start, Split(dataset), run, ("avg",))["avg"]
        return float(probe.accuracy(x, y)[head])

    result = {
        "holdout_top1": top1(held_set),
        "test_top1": top1(test_set),
        "blr": chosen["best_blr"],
        "fit_images": len(fit_set),
        "grid": chosen.get("grid"),
    }
    if run.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def difference_se(a: float, b: float, n: int) -> float:
    """Standard error (percentage points) of the difference of two top-1s (%) scored on the same ``n``
    images, as if independent: ``sqrt(a(1-a)/n + b(1-b)/n)``; an upper bound for paired scores."""
    p, q = a / 100, b / 100
    return 100 * math.sqrt(max(p * (1 - p) + q * (1 - q), 0.0) / max(n, 1))


def below_probe_note(result: dict[str, Any]) -> str | None:
    """One line when the fine-tuned classifier scored below its probe, with how to fix it; else None.

    Compared on the held-out images when the run had some (the split the checkpoint was chosen on), else on
    the test images (reported, never used to choose).
    """
    probe = result.get("probe")
    if not probe:
        return None
    split = "holdout" if result.get("holdout_top1") is not None else "test"
    mine, theirs = result.get(f"{split}_top1"), probe.get(f"{split}_top1")
    if mine is None or theirs is None or mine >= theirs:
        return None
    n = result["holdout_images"] if split == "holdout" else result["test_images"]
    se = difference_se(mine, theirs, n)
    where = "held-out" if split == "holdout" else "test"
    return (
        f"fine-tuning ended below the linear probe of its own starting encoder: {where} top-1 {mine:.2f}% "
        f"vs {theirs:.2f}% ({n} images, difference {theirs - mine:.1f} +/- {se:.1f} points); to fix: more "
        "steps (train.epochs), a lower train.blr, lighter augmentation (mixup=0 cutmix=0 randaug_n=0 "
        "reprob=0), or keep the probe (mimkit eval linear --pool avg)"
    )


def summary(result: dict[str, Any]) -> str:
    """``"test top-1 X% (held-out Y%, epoch E; its probe: held-out Z%, test W%)"`` of a fine-tuning result."""
    parts = []
    if result.get("holdout_top1") is not None:
        parts.append(f"held-out {result['holdout_top1']:.2f}% at epoch {result['best_epoch']}")
    probe = result.get("probe")
    if probe:
        held = probe.get("holdout_top1")
        scores = ([f"held-out {held:.2f}%"] if held is not None else []) + [f"test {probe['test_top1']:.2f}%"]
        parts.append("its linear probe: " + ", ".join(scores))
    chance = result.get("chance")
    if probe and chance_note(probe["test_top1"], chance):
        parts[-1] += " (within chance)"
    mine = f"test top-1 {result['test_top1']:.2f}%{chance_note(result['test_top1'], chance)}"
    return mine + (f" ({'; '.join(parts)})" if parts else "")
