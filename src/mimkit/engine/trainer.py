"""The one trainer, shared by pretraining, fine-tuning and linear probing.

It knows nothing of a particular method: each batch goes through ``model.training_step(batch)``, which
returns a dict with a scalar ``loss`` (and optionally other ``loss_*`` scalars to log). After each
optimizer step it calls ``model.on_train_step_end(step, total_steps)`` when the model has one (EMA
teachers). Everything else — schedule, accumulation, autocast (:mod:`mimkit.engine.precision`), fp16 loss
scaling, clipping, a wall-clock budget, checkpoints, exact resume, progress, metrics — lives here once.

A wall-clock budget (``train.max_minutes``) fits the schedule to the steps it buys, timing steps included,
so that the last step runs at ``min_lr`` (:mod:`mimkit.engine.budget`); the loop also stops (and
checkpoints) when the budget is spent, should the machine have slowed down beyond what a refit catches.

What tells a user the run works (:mod:`mimkit.engine.health`): the last step is always logged (screen,
``metrics.jsonl``, TensorBoard), whatever ``log_every``; the loss is shown against the loss of the model's
trivial prediction when the model has ``loss_baseline(batch)``; a picture callable gets the model every
``train.picture_every_minutes``; a resumed run with nothing left to train says why and which key trains on.

Length: one class on purpose. The step, accumulation, precision, budget, checkpoint and resume, DDP and
logging share the run's state (step, epoch, images consumed, plan); the budget's timing, the run's health,
preemption (:mod:`mimkit.engine.runctl`) and precision choice live outside it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from mimkit import rng
from mimkit.engine import checkpoint as ckpt
from mimkit.engine import dist
from mimkit.engine.budget import FINISH_SHARE, STRETCH_SHARE, Budget, budget_steps
from mimkit.engine.config import TrainConfig
from mimkit.engine.health import LossBaseline, Pictures
from mimkit.engine.host_memory import keep_freed_memory
from mimkit.engine.metrics import LogProgress, MetricsWriter
from mimkit.engine.optim import build_adamw, param_groups
from mimkit.engine.precision import autocast, grad_scaler, resolve_precision
from mimkit.engine.runctl import Preempted, RunLock, StopSignals
from mimkit.engine.schedule import cosine_lr
from mimkit.engine.trackers import Trackers

log = logging.getLogger("mimkit")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without overwriting the last good checkpoint."""


class ResumableLoader(Protocol):
    """What the trainer needs of a loader: batches in a per-epoch order it can restart mid-epoch."""

    def __iter__(self): ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def set_start_batch(self, index: int) -> None: ...


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float] | None: ...


def check_can_compile(device: torch.device) -> None:
    """``train.compile`` on the CPU: inductor writes C++, so a compiler must be installed (else one line)."""
    if device.type != "cpu":
        return
    import torch._inductor.config as inductor_config

    names = [os.environ.get("CXX")] + list(inductor_config.cpp.cxx)
    if not any(name and shutil.which(name) for name in names):
        raise ValueError(
            "train.compile=true on the CPU needs a C++ compiler (torch.compile's inductor writes C++): "
            "install g++ (apt-get install g++), set CXX, or use train.compile=false"
        )


def compile_step(fn: Callable, device: torch.device) -> Callable:
    """``torch.compile`` a training step (``train.compile``) with the settings mimkit relies on.

    Random ops (MAE's masks, GMML's noise) draw from torch's generator as in eager mode
    (``fallback_random``), so a compiled run is the eager run up to float rounding and resume stays exact.
    On the CPU inductor's pattern matcher is off: it rewrites the plain attention into the fused kernel
    whose bf16 backward is the slow one there (see :func:`mimkit.models.layers.use_fused_attention`).
    """
    check_can_compile(device)
    options: dict[str, Any] = {"fallback_random": True}
    if device.type == "cpu":
        options["pattern_matcher"] = False
    return torch.compile(fn, options=options)


class _Step(nn.Module):
    """Routes ``forward`` to ``training_step`` so a DDP or FSDP wrapper sees the call; only the scalar
    losses leave it (what the trainer uses; pictures' tensors would be views FSDP warns about)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model.training_step(batch)
        return {k: v for k, v in out.items() if k.startswith("loss") and v.ndim == 0}


class Trainer:
    """Train ``model`` on ``loader`` with the settings of ``cfg``; the run lives in ``run_dir``.

    Args:
        model: has ``training_step(batch) -> {"loss": scalar, ...}``.
        loader: yields ``(images uint8 [N, C, H, W], labels [N])``; has ``set_epoch`` / ``set_start_batch``.
        cfg: optimisation and bookkeeping settings.
        run_dir: checkpoints (``last.pt``), ``metrics.jsonl`` and TensorBoard events go here.
        batch_transform: applied on the device to the uint8 images (augmentation + normalisation).
        env: process/device environment (from :func:`mimkit.engine.dist.setup`); single CPU/GPU if None.
        config: the resolved config, stored in every checkpoint (the trainer does not read it).
        identity: what a checkpoint must match to be resumed by this run (e.g. the encoder and method
            configs); stored in every checkpoint and compared on resume. None: no check.
        extras: more entries for every checkpoint, stored as given (e.g. the encoder's ``grid_size``, which
            :func:`mimkit.load_weights` reads to resample position embeddings).
        layer_scale: per-parameter lr multiplier (layer-wise lr decay).
        callbacks: objects with ``on_epoch_end(epoch, model) -> metrics`` (e.g. online kNN).
        build_optimizer: ``(param_groups, lr) -> Optimizer``; default AdamW with ``cfg.betas`` (the linear
            probe passes LARS).
        clock: seconds from a monotonic clock, for ``cfg.max_minutes`` (tests pass a fake one).
        picture: ``(model, images, step) -> PNG path``, called every ``cfg.picture_every_minutes`` of training
            and at the end with a few images of the first batch (main process; not under FSDP, whose
            sharded forward needs every process); the PNG also goes to TensorBoard.
    """

    def __init__(
        self,
        model: nn.Module,
        loader: ResumableLoader,
        cfg: TrainConfig,
        run_dir: str | os.PathLike,
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        env: dist.DistEnv | None = None,
        config: dict[str, Any] | None = None,
        identity: dict[str, Any] | None = None,
        extras: dict[str, Any] | None = None,
        layer_scale: Callable[[str], float] | None = None,
        callbacks: Iterable[Callback] = (),
        build_optimizer: Callable[[list[dict], float], torch.optim.Optimizer] | None = None,
        clock: Callable[[], float] = time.monotonic,
        picture: Callable[[nn.Module, torch.Tensor, int], Path] | None = None,
    ):
        self.env = env or dist.DistEnv(device=dist.resolve_device(cfg.device))
        self.cfg = cfg
        self.clock = clock
        self.picture = picture
        # bf16 where native, fp16 with a loss scaler on GPUs without bf16, fp32 otherwise
        self.precision = resolve_precision(cfg.precision, self.env.device, announce=self.env.is_main)
        self.scaler = grad_scaler(self.precision, self.env.device.type)
        # on the CPU, steps reuse the memory the previous step freed instead of page-faulting it in again
        self.keeps_freed_memory = self.env.device.type == "cpu" and keep_freed_memory()
        self.run_dir = Path(run_dir)
        self.model = model.to(self.env.device)
        self.step_module = dist.wrap(_Step(self.model), self.env, cfg.strategy)
        self.sharded = cfg.strategy == "fsdp" and self.env.distributed
        if self.sharded and self.scaler is not None:
            raise ValueError(
                "train.strategy=fsdp with fp16 loss scaling (a GPU without bf16) is not supported: the "
                "overflow check would see each process's shard alone; use train.strategy=ddp, or "
                "train.precision=fp32"
            )
        if cfg.compile:
            # The wrapper is compiled, not the model: checkpoints keep the model's own parameter names.
            self.step_module = compile_step(self.step_module, self.env.device)
        self.loader = loader
        self.batch_transform = batch_transform
        self.config = config or {}
        self.identity = identity
        self.extras = dict(extras or {})
        self.callbacks = list(callbacks)

        self.micro_per_epoch = len(loader)
        self.steps_per_epoch = self.micro_per_epoch // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"an epoch has {self.micro_per_epoch} batches, fewer than "
                f"train.accum_steps={cfg.accum_steps}; "
                "use a smaller batch_size or accum_steps, or more data"
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = cfg.warmup_epochs * self.steps_per_epoch
        self.effective_batch = cfg.batch_size * cfg.accum_steps * self.env.world_size
        self.base_lr = cfg.lr if cfg.lr is not None else cfg.blr * self.effective_batch / 256
        groups = param_groups(self.model, cfg.weight_decay, layer_scale)
        if build_optimizer is None:
            self.optimizer = build_adamw(groups, self.base_lr, tuple(cfg.betas))
        else:
            self.optimizer = build_optimizer(groups, self.base_lr)
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.micro_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.elapsed_s = 0.0  # time spent in the training loop, over all sessions of the run
        self.planned_steps: int | None = None  # the schedule's length once fitted to train.max_minutes
        self.provisional_steps: int | None = None  # the plan while the steps are being timed (not stored)
        self.budget_minutes: float | None = None  # the budget the plan was made for
        self._pace_from: tuple[int, float] | None = None  # (step, seconds spent) the pace is measured from
        # run health (mimkit.engine.health), set up again by each fit: (step, loss) first and last logged
        self._first_loss: tuple[int, float] | None = None
        self._last_loss: tuple[int, float] | None = None
        self._baseline = LossBaseline(None, self.env.device)
        self._pictures = Pictures(None, 0, clock)
        trackers = None
        if self.env.is_main and (cfg.mlflow or cfg.wandb):
            trackers = Trackers(self.run_dir, cfg.mlflow, cfg.wandb, params=self.config)
        self.metrics = MetricsWriter(
            self.run_dir, enabled=self.env.is_main, tensorboard=cfg.tensorboard, trackers=trackers
        )

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The run's state; under FSDP a collective (every process calls it, rank 0 gets the tensors)."""
        if self.sharded:
            from mimkit.engine import fsdp

            model, optimizer = fsdp.full_state(self.model, self.optimizer)
        else:
            model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "model": model,
            "optimizer": optimizer,
            "step": self.step,
            "epoch": self.epoch,
            "micro_in_epoch": self.micro_in_epoch,
            # where the epoch stands in images and the batch that steps: a resume on another world size
            # (same effective batch) starts at the same image
            "images_in_epoch": self.micro_in_epoch * self.cfg.batch_size * self.env.world_size,
            "effective_batch": self.effective_batch,
            "rng": ckpt.rng_state(),
            "elapsed_s": self.elapsed_s,
            "planned_steps": self.planned_steps,
            "budget_minutes": self.budget_minutes,
            "total_steps": self.total_steps,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": self.config,
            "identity": self.identity,
            **self.extras,
        }

    def save(self) -> Path | None:
        """Write ``last.pt`` atomically (main process only; under FSDP every process gathers)."""
        if not self.env.is_main:
            if self.sharded:
                self.state_dict()
            return None
        return ckpt.save_atomic(self.state_dict(), self.run_dir / ckpt.LAST)

    def resume(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, position in the data and RNG state from a checkpoint."""
        state = ckpt.load_checkpoint(path)
        needed = ("model", "optimizer", "step", "epoch", "micro_in_epoch", "rng")
        missing = [k for k in needed if k not in state] if isinstance(state, dict) else list(needed)
        if missing:
            raise ValueError(
                f"{path} is not a mimkit training checkpoint (no {missing or 'dict'}); move it away, use "
                "another output_dir, or train.resume=false"
            )
        self._check_identity(state, path)
        if self.sharded:
            from mimkit.engine import fsdp

            fsdp.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        if "images_in_epoch" in state:
            self.micro_in_epoch = self._micro_from_images(state, path)
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.planned_steps = state.get("planned_steps")
        self.budget_minutes = state.get("budget_minutes")
        self._plan_again(state.get("total_steps", self.total_steps))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        if self.env.is_main:
            log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)

    def _plan_again(self, total_before: int) -> None:
        """A resumed budget plan is made again when it no longer holds: a larger ``train.max_minutes``, or
        more ``train.epochs`` where the budget had bought the whole schedule (a plan the budget bound stays:
        more epochs buy no more time)."""
        minutes, planned_for = self.cfg.max_minutes, self.budget_minutes
        if self.planned_steps is None or not minutes:
            return
        if planned_for and minutes > planned_for:
            why = f"train.max_minutes raised from {planned_for:g} to {minutes:g}"
        elif self.total_steps > total_before and self.planned_steps >= total_before:
            why = f"train.epochs raised to {self.cfg.epochs}"
        else:
            return
        if self.env.is_main:
            log.info(
                "%s: the rest of the schedule is fitted again to the time left (the lr rises from where step "
                "%d left it)",
                why,
                self.step,
            )
        self.planned_steps = None

    def _micro_from_images(self, state: dict[str, Any], path: str | os.PathLike) -> int:
        """The micro-batch to resume at, from the images the epoch had consumed (any world size)."""
        saved = state.get("effective_batch", self.effective_batch)
        if saved != self.effective_batch:
            raise ValueError(
                f"{path} was trained with an effective batch of {saved} images per step, this run has "
                f"{self.effective_batch} (batch_size {self.cfg.batch_size} x accum_steps "
                f"{self.cfg.accum_steps} x {self.env.world_size} processes): set train.batch_size or "
                f"train.accum_steps so that the product is {saved}, or use another output_dir"
            )
        per_micro = self.cfg.batch_size * self.env.world_size
        return int(state["images_in_epoch"]) // per_micro

    def _check_identity(self, state: dict[str, Any], path: str | os.PathLike) -> None:
        """Refuse to resume a checkpoint written by another run (another model, data or recipe)."""
        if self.identity is None:
            return
        saved = state.get("identity")
        wanted = self.identity
        if saved is None:  # written before checkpoints kept an identity: compare what its config holds
            old = state.get("config") or {}
            keys = [k for k in self.identity if k in old]
            saved, wanted = {k: old[k] for k in keys}, {k: self.identity[k] for k in keys}
        if saved != wanted:
            raise ValueError(
                f"{path} was written by a run with {saved}, not {wanted}; "
                "use another output_dir or train.resume=false"
            )

    # ----------------------------------------------------------------------------- training
    @property
    def schedule_steps(self) -> int:
        """The length of the lr (and EMA) schedule: ``epochs`` worth of steps, or the budget's plan (while
        the steps are timed, its provisional plan)."""
        return self.planned_steps or self.provisional_steps or self.total_steps

    def lr_at(self, step: int) -> float:
        """The lr of optimizer step ``step`` (0-based): warm-up, then a half-cosine that reaches ``min_lr``
        at the schedule's last step, ``schedule_steps - 1``, so that the last step a run takes runs at
        ``min_lr`` (MAE's per-iteration schedule reaches it one step later, after the run)."""
        total, warmup = self.schedule_steps, self.warmup_steps
        if total < self.total_steps:  # a schedule shortened by the budget: warm-up at most a quarter of it
            warmup = min(warmup, total / 4)
        return cosine_lr(step, self.base_lr, total - 1, warmup, self.cfg.min_lr)

    def _set_lr(self) -> float:
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def _autocast(self):
        return autocast(self.precision.precision, self.env.device.type)

    def fit(self) -> dict[str, float]:
        """Train until ``epochs`` (or ``max_steps``, or ``max_minutes``) are done; resumes from
        ``run_dir/last.pt`` if present.

        Returns:
            The last logged metrics.

        Raises:
            NonFiniteLossError: the loss became NaN/inf (``last.pt`` is left at the last good state).
        """
        with RunLock(self.run_dir, enabled=self.env.is_main), StopSignals() as stop:
            cfg = self.cfg
            last = ckpt.last_checkpoint(self.run_dir)
            if cfg.resume and last is not None:
                self.resume(last)
            else:
                ckpt.seed_everything(cfg.seed + self.env.rank)
            budget = Budget(
                cfg.max_minutes,
                self.clock,
                self.elapsed_s,
                self.step,
                self.planned_steps is not None,
                self.env.device,
            )
            budget_s = budget.seconds
            self._pace_from = None  # a resumed plan's pace: from the session's first logging step
            stop_at = self._stop_at()
            progress = self._progress(stop_at)
            self._announce()
            self._say_cut()
            self._start_health()
            self.model.train()
            last_metrics: dict[str, float] = {}
            sums: dict[str, torch.Tensor] = {}
            count, images_seen, t_log = 0, 0, time.perf_counter()
            first_step, total_images, t_fit = self.step, 0, time.perf_counter()

            def log_now() -> None:  # the losses since the last logged step, if any
                nonlocal last_metrics, sums, count, images_seen, t_log
                if count:
                    last_metrics = self._log(sums, count, images_seen, t_log, lr, progress)
                    sums, count, images_seen, t_log = {}, 0, 0, time.perf_counter()

            try:
                while self.step < stop_at and self.epoch < cfg.epochs and not self._out_of_time(budget_s):
                    self.loader.set_epoch(self.epoch)
                    self.loader.set_start_batch(self.micro_in_epoch)
                    for images, labels in self.loader:
                        keys = self._sample_keys(images.shape[0])
                        last_micro = (self.micro_in_epoch + 1) % cfg.accum_steps == 0
                        out = self._micro_step(images, labels, keys, sync=last_micro)
                        for key, value in out.items():  # _Step lets the scalar losses through only
                            sums[key] = sums.get(key, 0.0) + value.detach().float()
                        count += 1
                        images_seen += images.shape[0] * self.env.world_size
                        total_images += images.shape[0] * self.env.world_size
                        self.micro_in_epoch += 1
                        if self.micro_in_epoch % cfg.accum_steps:
                            continue
                        lr = self._optimizer_step()
                        planned = budget_s is not None and self._fit_budget(budget, budget_s)
                        if progress is not None:
                            progress.update(1)
                        if self.step % cfg.log_every == 0 or self.step == stop_at:
                            log_now()
                            refit = budget_s is not None and self.step % cfg.log_every == 0
                            planned = (refit and self._refit(budget_s)) or planned
                        if planned:  # the plan was made or refitted: its end is the run's end
                            stop_at = self._stop_at()
                            if progress is not None:
                                progress.total = stop_at
                        if self._pictures.due():
                            self._take_picture(budget)
                        if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                            self._check_finite(sums)
                            self.save()
                        if self._stop_requested(stop):  # a signal: end on a saved, logged step
                            log_now()
                            raise Preempted(stop.received or "a signal", self.step, self.save())
                        if self.step >= stop_at or self._out_of_time(budget_s):
                            break
                    if self.micro_in_epoch >= self.steps_per_epoch * cfg.accum_steps:
                        self.epoch, self.micro_in_epoch = self.epoch + 1, 0
                        last_metrics.update(self._end_epoch(budget))
                    self._check_finite(sums)
                    self.save()
                if self.step > first_step:
                    log_now()  # the last step, whatever log_every
                    self._take_picture(budget)
                elif self.env.is_main:
                    self._nothing_to_train(budget_s, resumed=last is not None and cfg.resume)
            finally:
                if progress is not None:
                    progress.close()
                self.metrics.close()
        self._summary(first_step, total_images, time.perf_counter() - t_fit, budget_s)
        return last_metrics

    def _stop_requested(self, stop: StopSignals) -> bool:
        """Whether to stop after this optimizer step. In a distributed run the ranks agree on it at the
        logging steps (one all-reduce there), so that all of them stop after the same step."""
        if not self.env.distributed:
            return stop.received is not None
        if self.step % self.cfg.log_every:
            return False
        flag = torch.tensor([int(stop.received is not None)], device=self.env.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and stop.received is None:
            stop.received = "a signal to another process"
        return bool(flag.item())

    def _stop_at(self) -> int:
        return min(self.planned_steps or self.total_steps, self.cfg.max_steps or self.total_steps)

    def _out_of_time(self, budget_s: float | None, agree: bool = True) -> bool:
        """Whether the budget is spent, so that the run stops after this step.

        Within the last :data:`FINISH_SHARE` of the planned steps the run finishes its plan unless that
        overruns the budget by more than :data:`FINISH_SHARE`. In a distributed run (``agree``) the ranks
        decide together on the slowest one's clock, at the logging steps only (one all-reduce there, as for
        stop signals): every call site is reached by every rank after the same step.
        """
        if budget_s is None:
            return False
        spent = self.elapsed_s
        if agree and self.env.distributed:
            if self.step % self.cfg.log_every:
                return False
            spent = dist.max_over_ranks(spent, self.env.device)
        if spent < budget_s:
            return False
        near_end = self.planned_steps is not None and self.step >= (1 - FINISH_SHARE) * self.planned_steps
        return not (near_end and spent < (1 + FINISH_SHARE) * budget_s)

    def _fit_budget(self, budget: Budget, budget_s: float) -> bool:
        """After an optimizer step: the time spent and, while the steps are timed, the plan. Until the
        timing is complete the plan is provisional (the lr of the timing steps follows it), unless it shows
        the budget ending first: then it is the plan. Returns whether the plan was made now.

        In a distributed run every rank plans with the slowest rank's time and clock (one all-reduce per
        timed step, 10 per run), so that all plan the same steps and take the same lr."""
        self.elapsed_s, s_per_step, done = budget.after_step(self.step)
        if s_per_step is None:
            return False
        elapsed_s = self.elapsed_s
        if self.env.distributed:
            s_per_step = dist.max_over_ranks(s_per_step, self.env.device)
            elapsed_s = dist.max_over_ranks(elapsed_s, self.env.device)
        steps = budget_steps(self.step, elapsed_s, s_per_step, budget_s, self.total_steps)
        if not done and steps > budget.timing_end:
            self.provisional_steps = steps
            return False
        budget.stop_timing()
        self.planned_steps, self.provisional_steps = steps, None
        self.budget_minutes, self._pace_from = budget_s / 60, (self.step, elapsed_s)
        if self.env.is_main:
            log.info(
                "time budget %g min: %.3f s per step measured, so %d of the %d scheduled steps "
                "(%.2f of %d epochs), the %d timed included; warm-up and cosine decay fitted to them",
                budget_s / 60,
                s_per_step,
                self.planned_steps,
                self.total_steps,
                self.planned_steps / self.steps_per_epoch,
                self.cfg.epochs,
                self.step,
            )
        return True

    def _refit(self, budget_s: float) -> bool:
        """At a logging step of a planned run: when its steps since the plan (or since the session's first
        logging step) ran so much slower than timed that the plan would overrun the budget, fit the rest of
        the schedule to the time left; the lr steps down onto the shorter cosine. When they ran so much
        faster that the budget would buy :data:`~mimkit.engine.budget.STRETCH_SHARE` more steps, and the
        run is in the first half of its plan (the timing saw a machine busy with other work), stretch the
        schedule to them; the lr steps up onto the longer cosine, early enough to decay again. Returns
        whether it refitted. Distributed: on the slowest rank's clock (one all-reduce per logging step)."""
        if self.planned_steps is None or self.step >= self.planned_steps:
            return False
        elapsed = self.elapsed_s
        if self.env.distributed:
            elapsed = dist.max_over_ranks(elapsed, self.env.device)
        if self._pace_from is None or self._pace_from[0] >= self.step:
            self._pace_from = (self.step, elapsed)
            return False
        step0, elapsed0 = self._pace_from
        pace = (elapsed - elapsed0) / (self.step - step0)
        steps = budget_steps(self.step, elapsed, pace, budget_s, self.total_steps)
        if steps > self.planned_steps * (1 + STRETCH_SHARE) and self.step < self.planned_steps / 2:
            if self.env.is_main:
                log.info(
                    "steps sped up to %.3f s each since step %d: the %d planned steps would leave %.1f of "
                    "the %g budget minutes unspent, so the rest of the schedule is stretched to %d steps",
                    pace,
                    step0,
                    self.planned_steps,
                    (budget_s - elapsed - (self.planned_steps - self.step) * pace) / 60,
                    budget_s / 60,
                    steps,
                )
            self.planned_steps = steps
            return True
        if elapsed + (self.planned_steps - self.step) * pace <= budget_s or steps >= self.planned_steps:
            return False
        if self.env.is_main:
            log.info(
                "steps slowed to %.3f s each since step %d: the %d planned steps would overrun the %g-minute "
                "budget, so the rest of the schedule is fitted to %d steps",
                pace,
                step0,
                self.planned_steps,
                budget_s / 60,
                steps,
            )
        self.planned_steps = steps
        return True

    def _nothing_to_train(self, budget_s: float | None, resumed: bool) -> None:
        """One line for a run that had nothing left to train: why, and which key trains it longer."""
        cfg, where = self.cfg, f"{self.run_dir} " if resumed else ""
        if cfg.max_steps and self.step >= cfg.max_steps:
            why, key = f"reached train.max_steps={cfg.max_steps}", "train.max_steps"
        elif self.step >= self.total_steps or self.epoch >= cfg.epochs:
            why, key = f"finished its {cfg.epochs} epochs (train.epochs)", "train.epochs"
        else:
            minutes = cfg.max_minutes or self.budget_minutes
            budget = f"{minutes:g}-minute budget" if minutes else "time budget"
            why = f"spent its {budget} (train.max_minutes)"
            if self.planned_steps is not None and self.step >= self.planned_steps:
                why = f"ended the schedule fitted to its {budget} (train.max_minutes)"
            key = "train.max_minutes (the rest of the schedule is fitted to the time added)"
        log.info(
            "nothing to train: the run %shas %s at step %d; to train longer, run it again with a larger "
            "%s, or use another output_dir for a new run",
            where,
            why,
            self.step,
            key,
        )

    def _announce(self) -> None:
        """One line: the precision and attention path the steps take, the effective batch and its lr."""
        if not self.env.is_main:
            return
        where = (self.env.device.type, self.precision.precision)  # each attention module says what it runs
        paths = {m.attention_path(*where) for m in self.model.modules() if hasattr(m, "attention_path")}
        log.info(
            "training on %s in %s; attention: %s%s%s; batch %d x %d accumulated x %d process(es) = %d per "
            "step, lr %.3g",
            self.env.device,
            self.precision.precision,
            " / ".join(sorted(paths)) or "none",
            "; torch.compile" if self.cfg.compile else "",
            "; freed host memory kept for reuse" if self.keeps_freed_memory else "",
            self.cfg.batch_size,
            self.cfg.accum_steps,
            self.env.world_size,
            self.effective_batch,
            self.base_lr,
        )

    def _say_cut(self) -> None:
        """One line where ``train.max_steps`` ends the run part-way through its schedule: a step budget cuts
        the recipe's schedule where a time budget fits it, so the last steps run near the peak lr, not at
        the end of its decay (runs compared at such a cut are compared part-way)."""
        cfg = self.cfg
        if not self.env.is_main or cfg.max_minutes or not cfg.max_steps or self.step >= cfg.max_steps:
            return
        if cfg.max_steps >= self.total_steps:
            return
        epochs = max(1, round(cfg.max_steps / self.steps_per_epoch))
        log.info(
            "train.max_steps=%d stops the run at %.0f%% of its %d-step schedule (train.epochs=%d), where "
            "the lr is still %.3g of its peak %.3g; for warm-up and decay within about these steps, set "
            "train.epochs=%d (%d steps) and train.warmup_epochs below it instead",
            cfg.max_steps,
            100 * cfg.max_steps / self.total_steps,
            self.total_steps,
            cfg.epochs,
            self.lr_at(cfg.max_steps - 1),
            self.base_lr,
            epochs,
            epochs * self.steps_per_epoch,
        )

    def _summary(self, first_step: int, images: int, seconds: float, budget_s: float | None) -> None:
        if not self.env.is_main or self.step == first_step:
            return
        ran_out = ""
        if self._out_of_time(budget_s, agree=False) and self.step < self._stop_at():
            minutes = f"; the {budget_s / 60:g}-minute budget ran out"
            ran_out = f"{minutes} before the planned {self._stop_at()} steps"
            if self.planned_steps is None:  # a few slow steps spent it
                ran_out = f"{minutes} before its steps were timed: the schedule was not fitted; give it more"
        log.info(
            "trained steps %d-%d (%d images) in %.1f s: %.1f images/s (%s)%s%s",
            first_step + 1,
            self.step,
            images,
            seconds,
            images / max(seconds, 1e-9),
            self.precision.precision,
            ran_out,
            self._loss_summary(),
        )

    def _loss_summary(self) -> str:
        """``"; loss 1.02 at step 20 -> 0.43 at step 180 against 0.94 for ...: learning"``, or ''."""
        if self._last_loss is None:
            return ""
        (first, loss0), (last, loss) = self._first_loss, self._last_loss
        start = f"{loss0:.4g} at step {first} -> " if first != last else ""
        return f"; loss {start}{loss:.4g} at step {last}{self._baseline.describe(loss)}"

    def _start_health(self) -> None:
        """A session's loss baseline and picture timer (main process; pictures not under FSDP)."""
        main = self.env.is_main
        self._first_loss = self._last_loss = None
        self._baseline = LossBaseline(self.model if main else None, self.env.device)
        draw = self.picture if main and not self.sharded else None
        if main and self.picture is not None and self.sharded and self.cfg.picture_every_minutes:
            log.info("no reconstruction pictures during training under FSDP: take them after with the run")
        self._pictures = Pictures(draw, self.cfg.picture_every_minutes, self.clock)

    def _take_picture(self, budget: Budget) -> None:
        """A picture now (if one is set up and this step has none), outside the budget's time."""
        t = self.clock()
        path = self._pictures.take(self.model, self.step)
        self.model.train()
        if path is not None:
            self.metrics.write_image(self.step, "reconstruction", path)
            log.info("reconstruction picture at step %d: %s", self.step, path)
        budget.exclude(self.clock() - t)

    def _sample_keys(self, n: int) -> torch.Tensor | None:
        """The batch's per-sample random keys (:mod:`mimkit.rng`), from the loader's ``last_indices``."""
        indices = getattr(self.loader, "last_indices", None)
        if indices is None or len(indices) != n:
            return None
        return rng.sample_keys(self.cfg.seed, self.epoch, indices)

    def _micro_step(
        self, images: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor | None = None, sync: bool = True
    ) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch; ``keys`` key its random draws per sample; without
        ``sync`` (an accumulation step before the last) DDP and FSDP keep the gradients local."""
        device = self.env.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        no_sync = getattr(self.step_module, "no_sync", None)  # DDP
        if self.sharded:
            self.step_module.set_requires_gradient_sync(sync)  # FSDP: reduce-scatter on the last only
        with rng.use(keys), no_sync() if no_sync is not None and not sync else contextlib.nullcontext():
            if self.batch_transform is not None:
                with torch.no_grad():
                    images = self.batch_transform(images)
            with self._autocast():
                out = self.step_module((images, labels))
            if "loss" not in out or out["loss"].ndim != 0:
                raise ValueError(f"{type(self.model).__name__}.training_step must return a scalar 'loss'")
            loss = out["loss"] / self.cfg.accum_steps
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self._baseline.add((images, labels))  # the first batches only; outside the keyed draws
        self._pictures.capture(images)
        return out

    def _optimizer_step(self) -> float:
        lr = self._set_lr()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip (and step) the true gradients
        if self.cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        hook = getattr(self.model, "on_train_step_end", None)
        if hook is not None:
            hook(self.step, self.schedule_steps)
        return lr

    def _check_finite(self, sums: dict[str, torch.Tensor]) -> None:
        loss = sums.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"the loss became {float(loss)} by step {self.step} (epoch {self.epoch}); stopped without "
                f"saving, {self.run_dir / ckpt.LAST} holds the last good state. Lower the lr, set "
                "train.clip_grad, or use train.precision=bf16 or fp32 (fp16's range is the narrowest)"
            )

    def _log(self, sums, count, images_seen, t_log, lr, progress) -> dict[str, float]:
        if self.env.distributed and sums:  # the logged losses are the whole batch's: mean over the ranks
            keys = sorted(sums)
            stacked = torch.stack([torch.as_tensor(sums[k], device=self.env.device).float() for k in keys])
            torch.distributed.all_reduce(stacked)
            sums = dict(zip(keys, stacked / self.env.world_size, strict=True))
        self._check_finite(sums)  # the one host sync: only every log_every steps
        elapsed = max(time.perf_counter() - t_log, 1e-9)
        values = {k: float(v) / max(count, 1) for k, v in sums.items()}
        values.update(
            lr=lr,
            epoch=self.epoch + self.micro_in_epoch / self.micro_per_epoch,
            images_per_s=images_seen / elapsed,
        )
        if self.env.is_main:
            values.update(self._baseline.finish() or {})  # a flat line next to the loss in TensorBoard
        if "loss" in values:
            self._last_loss = (self.step, values["loss"])
            self._first_loss = self._first_loss or self._last_loss
        self.metrics.write(self.step, values)
        if progress is not None:
            progress.set_postfix(
                loss=f"{values.get('loss', float('nan')):.4f}",
                lr=f"{lr:.2e}",
                img_s=f"{values['images_per_s']:.0f}",
            )
        return values

    def _end_epoch(self, budget: Budget) -> dict[str, float]:
        values: dict[str, float] = {}
        t = self.clock()
        for callback in self.callbacks:
            values.update(callback.on_epoch_end(self.epoch, self.model) or {})
        budget.exclude(self.clock() - t)  # evaluation is not training time
        if values:
            self.metrics.write(self.step, {"epoch": self.epoch, **values})
            self.model.train()
        return values

    def _progress(self, stop_at: int):
        if not (self.cfg.progress and self.env.is_main):
            return None
        if not sys.stderr.isatty():  # a log file or a pipe: one line per log interval, not a bar
            return LogProgress(stop_at, self.step)
        from tqdm.auto import tqdm

        return tqdm(total=stop_at, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
