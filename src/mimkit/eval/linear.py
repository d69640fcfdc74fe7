"""Linear probe on frozen, cached features (as MAE's linear probing, He et al., 2021).

``BatchNorm1d(affine=False, eps=1e-6)`` then ``Linear`` (weights ~ N(0, 0.01), bias 0), trained with LARS
(momentum 0.9, trust coefficient 0.001, no decay on 1-D parameters), lr = blr * batch / 256, warm-up then
cosine. The fast path: the features are extracted once (no crop / flip augmentation: the price of
caching), and one head per base lr is trained at the same time on the same batches (the heads share the
BatchNorm, which has no parameters). The lr is chosen on a per-class held-out part of the *training*
features; the test features are only used to score the chosen head, after the choice. A best lr at an end
of the sweep is not taken as found: the sweep goes on past that end, x10 at a time, up to
:data:`~mimkit.eval.grid.MAX_EXTENSIONS` values (:func:`~mimkit.eval.grid.search_grid`), and the result
says where it stopped. By default the chosen lr is then trained again on all the training features
(``refit``) before the test.

Training goes through :class:`~mimkit.engine.Trainer` (checkpoints, exact resume, metrics, progress) on
a loader of feature batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mimkit.data.loader import build_loader
from mimkit.data.subsets import holdout_split
from mimkit.engine import dist
from mimkit.engine.config import TrainConfig
from mimkit.engine.dist import resolve_device
from mimkit.engine.lars import LARS
from mimkit.engine.trainer import Trainer
from mimkit.eval.grid import search_grid
from mimkit.eval.records import chance_level
from mimkit.logs import quiet

log = logging.getLogger("mimkit")


@dataclass
class LinearProbeConfig:
    """The linear-probe recipe; defaults as docs/methods.md ("Evaluation protocols") except the blr sweep.

    Attributes:
        blrs: base learning rates trained at once (lr = blr * batch / 256); MAE uses 0.1. When the best is
            the smallest or largest, one more x10 beyond it is tried, a few times at most.
        epochs, warmup_epochs: schedule (per-iteration warm-up, then half-cosine to 0).
        batch_size: features per step.
        weight_decay: LARS weight decay on the weight matrices (MAE: 0).
        momentum, trust_coefficient: LARS settings.
        holdout: fraction of each class's training features held out to choose the blr.
        refit: train the chosen blr again on all the training features before the test.
        seed: held-out split, head initialisation and batch order.
        device: ``auto`` / ``cpu`` / ``cuda[:N]``.
        log_every, progress, tensorboard: the trainer's bookkeeping.
    """

    blrs: list[float] = field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    epochs: int = 90
    warmup_epochs: float = 10.0
    batch_size: int = 256
    weight_decay: float = 0.0
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    holdout: float = 0.1
    refit: bool = True
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    progress: bool = False
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if not self.blrs or not all(isinstance(b, (int, float)) and b > 0 for b in self.blrs):
            raise ValueError(
                f"blrs must be a non-empty list of positive base learning rates, got {self.blrs!r}"
            )
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1) (a fraction of each class), got {self.holdout!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be > 0, got {self.trust_coefficient!r}")
        # epochs, batch size, warm-up, weight decay, device: checked by TrainConfig
        self.train_config(1.0)

    def train_config(self, base: float, **changes: Any) -> TrainConfig:
        """The trainer's settings; ``lr = base`` (each head's group scales it by its blr)."""
        values = dict(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=base,
            warmup_epochs=self.warmup_epochs,
            weight_decay=self.weight_decay,
            seed=self.seed,
            device=self.device,
            precision="fp32",
            log_every=self.log_every,
            progress=self.progress,
            tensorboard=self.tensorboard,
        )
        values.update(changes)
        return TrainConfig(**values)


class LinearProbe(nn.Module):
    """``BatchNorm1d(affine=False)`` shared by ``num_heads`` independent ``Linear`` heads.

    Args:
        dim: feature width D.
        num_classes: classes C.
        num_heads: heads trained side by side (one per learning rate).
        seed: the heads' initial weights are drawn from it (the global RNG is not touched).
    """

    def __init__(self, dim: int, num_classes: int, num_heads: int = 1, seed: int = 0):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(num_heads))
        generator = torch.Generator().manual_seed(seed)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01, generator=generator)
            nn.init.zeros_(head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` -> logits ``[H, N, C]``."""
        x = self.norm(features)
        return torch.stack([head(x) for head in self.heads])

    def training_step(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum over the heads of each head's mean cross-entropy (each head gets exactly its own gradient).

        A head whose loss is no longer finite (its lr was too high) drops out of the sum, so that one
        diverging lr does not stop the others; :meth:`diverged` names it afterwards.
        """
        features, labels = batch[0], batch[1]
        logits = self(features)  # [H, N, C]
        per_head = F.cross_entropy(
            logits.flatten(0, 1), labels.repeat(len(self.heads)), reduction="none"
        ).view(len(self.heads), -1)
        per_head = per_head.mean(dim=1)  # [H]
        return {"loss": torch.where(per_head.isfinite(), per_head, 0.0).sum()}

    def diverged(self) -> list[int]:
        """Indices of the heads whose weights are no longer finite."""
        return [
            i
            for i, head in enumerate(self.heads)
            if not all(bool(p.isfinite().all()) for p in head.parameters())
        ]

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Top-1 accuracy (%) of every head: float ``[H]``."""
        was_training = self.training
        self.eval()
        device = self.norm.running_mean.device
        correct = torch.zeros(len(self.heads), device=device)
        for start in range(0, features.shape[0], chunk):
            x = features[start : start + chunk].to(device)
            y = labels[start : start + chunk].to(device)
            correct += (self(x).argmax(dim=-1) == y).sum(dim=1)
        self.train(was_training)
        return (100.0 * correct / max(features.shape[0], 1)).cpu()


class FeatureSet:
    """Cached features for the batch loader's in-memory path, which slices ``.images`` (here the features
    ``[N, D]``) and ``.labels`` ``[N]`` a whole batch at a time (no per-item access)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        assert features.shape[0] == labels.shape[0], (features.shape, labels.shape)
        self.images = features
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def holdout_summary(result: dict[str, Any], unit: str = "") -> str:
    """``"blr: top-1<unit>, ..."`` of a :func:`linear_probe` result, with "diverged" for a diverged blr."""
    diverged = result.get("diverged_blrs", ())  # absent from results written before it existed
    return ", ".join(
        f"{b:g}: diverged" if b in diverged else f"{b:g}: {a:.2f}{unit}"
        for b, a in result["holdout_top1"].items()
    )


def _fingerprint(features: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256(features.contiguous().float().numpy().tobytes())
    digest.update(labels.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


def _num_classes(*labels: torch.Tensor) -> int:
    return int(max(int(y.max()) for y in labels if y.numel())) + 1


def train_heads(
    features: torch.Tensor,
    labels: torch.Tensor,
    blrs: Sequence[float],
    cfg: LinearProbeConfig,
    run_dir: str | os.PathLike,
    num_classes: int | None = None,
) -> LinearProbe:
    """Train one head per base lr on ``features [N, D]`` / ``labels [N]`` with LARS, through the trainer.

    The run lives in ``run_dir`` and resumes from its last checkpoint (a finished run returns at once).
    """
    num_classes = num_classes or _num_classes(labels)
    probe = LinearProbe(features.shape[1], num_classes, len(blrs), seed=cfg.seed)
    batch = min(cfg.batch_size, features.shape[0])
    train_cfg = cfg.train_config(batch / 256, batch_size=batch)
    loader = build_loader(FeatureSet(features, labels), batch, shuffle=True, drop_last=True, seed=cfg.seed)
    scales = {f"heads.{i}.{p}": float(blr) for i, blr in enumerate(blrs) for p in ("weight", "bias")}
    # a resume must be on the same features with the same sweep
    identity = {
        "features": _fingerprint(features, labels),
        "dim": features.shape[1],
        "blrs": [float(b) for b in blrs],
    }

    def lars(groups: list[dict], lr: float) -> LARS:  # per-head lr through each group's lr_scale (its blr)
        return LARS(groups, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)

    # the trainer's lines (precision, batch, the summed loss of all heads) say nothing of any one head: the
    # probe says what it chose (fit_probe)
    with quiet():
        trainer = Trainer(
            probe,
            loader,
            train_cfg,
            run_dir,
            config={"probe": asdict(cfg), **identity},
            identity=identity,
            layer_scale=scales.__getitem__,
            build_optimizer=lars,
            env=dist.replica_env(resolve_device(train_cfg.device)),  # under torchrun: rank 0 writes
        )
        trainer.fit()
    return probe


def fit_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    run_dir: str | os.PathLike,
    cfg: LinearProbeConfig | None = None,
    num_classes: int | None = None,
    refit: bool | None = None,
) -> tuple[LinearProbe, int, dict[str, Any]]:
    """Choose the base lr on held-out training features and train the chosen head (again on all of them
    when ``refit``, default ``cfg.refit``).

    Args:
        train_features: ``[N, D]`` frozen features; ``train_labels`` ``[N]``.
        run_dir: ``select/`` (all blrs on the fit part) and ``refit/`` (the chosen blr on everything) runs.
        num_classes: classes of the heads (default: from the labels).

    Returns:
        ``(probe, head, result)``: the trained probe and the index of the chosen blr's head in it;
        ``result`` is :func:`linear_probe`'s without ``test_top1``.

    Raises:
        ValueError: unlabeled features; every blr diverged; the chosen one diverged when re-trained.
    """
    cfg = cfg or LinearProbeConfig()
    refit = cfg.refit if refit is None else refit
    if train_labels.numel() == 0 or int(train_labels.min()) < 0:
        raise ValueError("the linear probe needs labeled training features; some labels are -1 (unlabeled)")
    run_dir = Path(run_dir)
    num_classes = num_classes or _num_classes(train_labels)
    fit_idx, held_idx = holdout_split(train_labels, cfg.holdout, cfg.seed)
    if fit_idx.numel() == 0:
        raise ValueError(
            f"holdout={cfg.holdout} leaves no training features to fit on ({train_labels.shape[0]} in all)"
        )
    fit_x, fit_y = train_features[fit_idx], train_labels[fit_idx]
    trained: dict[float, tuple[LinearProbe, int]] = {}  # blr -> (its probe, its head)
    held: dict[float, float] = {}

    def score(blrs: list[float]) -> list[float | None]:
        """Train one head per blr on the fit part (a run directory per call); top-1 on the held-out part."""
        name = "select" if not trained else f"select_{blrs[0]:g}"  # an extension: one blr
        probe = train_heads(fit_x, fit_y, blrs, cfg, run_dir / name, num_classes)
        accuracy = probe.accuracy(train_features[held_idx], train_labels[held_idx]).tolist()
        diverged = probe.diverged()
        for i, blr in enumerate(blrs):
            trained[blr], held[blr] = (probe, i), accuracy[i]
        return [None if i in diverged else accuracy[i] for i in range(len(blrs))]

    try:  # the grid extends past the end its best blr sits at (x10 at a time, a few times at most)
        search = search_grid(cfg.blrs, score)
    except ValueError:
        raise ValueError(
            f"linear probe: every blr of {cfg.blrs} diverged (the heads' weights became NaN/inf); "
            "try smaller ones"
        ) from None
    diverged = [b for b, a in search.scores.items() if a is None]
    if diverged:
        log.warning(
            "linear probe: blr %s diverged (weights NaN/inf); chosen among the others",
            ", ".join(f"{b:g}" for b in diverged),
        )
    best_blr = search.best
    log.info("linear probe: blrs %s tried; %s", ", ".join(f"{b:g}" for b in search.scores), search.stopped)
    result: dict[str, Any] = {
        "best_blr": best_blr,
        "lr": best_blr * min(cfg.batch_size, train_features.shape[0]) / 256,
        "holdout_top1": {b: held[b] for b in sorted(held)},
        "diverged_blrs": diverged,
        "grid": {"tried": sorted(search.scores), "extensions": search.extensions, "stopped": search.stopped},
        "fit_images": int(fit_idx.numel()),
        "holdout_images": int(held_idx.numel()),
        "refit": refit,
    }
    if not refit:
        return (*trained[best_blr], result)
    final = train_heads(train_features, train_labels, [best_blr], cfg, run_dir / "refit", num_classes)
    if final.diverged():
        raise ValueError(
            f"linear probe: blr {best_blr:g} diverged when re-trained on all the training features "
            "(weights NaN/inf); give smaller blrs or refit=false"
        )
    return final, 0, result


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor | None,
    test_labels: torch.Tensor | None,
    run_dir: str | os.PathLike,
    cfg: LinearProbeConfig | None = None,
) -> dict[str, Any]:
    """Choose the base lr on held-out training features, then score the chosen head on the test features.

    Args:
        train_features: ``[N, D]`` frozen features of the training split; ``train_labels`` ``[N]``.
        test_features: ``[M, D]`` (or None: choose the lr only); ``test_labels`` ``[M]``.
        run_dir: ``select/`` (all blrs on the fit part) and ``refit/`` (the chosen blr on everything) runs,
            and ``linear_probe.json``.
        cfg: the recipe.

    Returns:
        ``{"best_blr", "lr", "holdout_top1": {blr: %}, "diverged_blrs", "grid", "test_top1": % or None,
        "chance", "fit_images", "holdout_images", "refit"}`` (``chance``: the test set's
        :func:`~mimkit.eval.records.chance_level`, None without a test); ``holdout_top1`` has every blr
        tried (the sweep and its extensions), ``grid`` is ``{"tried", "extensions", "stopped"}`` (where
        the search stopped and why); a blr whose head diverged (weights NaN/inf) is listed in
        ``diverged_blrs`` and never chosen.

    Raises:
        ValueError: unlabeled features; every blr diverged; the chosen one diverged when re-trained.
    """
    cfg = cfg or LinearProbeConfig()
    if test_labels is not None and test_labels.numel() and int(test_labels.min()) < 0:
        raise ValueError("the linear probe needs labeled test features; some labels are -1 (unlabeled)")
    testing = test_features is not None and test_labels is not None
    num_classes = _num_classes(train_labels, *(() if test_labels is None else (test_labels,)))
    probe, head, result = fit_probe(
        train_features, train_labels, run_dir, cfg, num_classes, refit=cfg.refit and testing
    )
    result["refit"] = cfg.refit
    result["test_top1"] = float(probe.accuracy(test_features, test_labels)[head]) if testing else None
    result["chance"] = chance_level(test_labels) if testing else None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "linear_probe.json").write_text(json.dumps(result, indent=2) + "\n")
    best_blr = result["best_blr"]
    log.info(
        "linear probe: blr %g chosen on %d held-out features (%.2f%%); test top-1 %s",
        best_blr,
        result["holdout_images"],
        result["holdout_top1"][best_blr],
        "-" if result["test_top1"] is None else f"{result['test_top1']:.2f}%",
    )
    return result
