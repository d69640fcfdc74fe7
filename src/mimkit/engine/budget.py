"""``train.max_minutes``: a wall-clock budget for a training run, and how the trainer fits its schedule to it.

The trainer times a few steps after the first ones, then fits the number of steps to the budget: the
cosine decay is compressed to that many steps (warm-up keeps its length, at most a quarter of a shortened
schedule), so that the run's last step runs at ``min_lr`` rather than being cut in the middle. The plan
counts every step of the run, the timed ones too: while the steps are being timed the lr already follows
a provisional plan made from the time measured so far, and when that shows the budget ending before the
timing does, it becomes the plan. Later, at the logging steps, a run whose steps have slowed down so much
that the plan would overrun the budget fits the rest of its schedule to the time left, and one whose steps
sped up by more than :data:`STRETCH_SHARE`, in the first half of its plan, stretches it. The budget is
training time: evaluations and pictures between steps do not count. The plan, the time spent and the
budget are stored in the checkpoint, so a resumed run keeps its schedule; one resumed with a larger
``train.max_minutes`` plans the rest again.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# steps run before timing starts (allocation, compilation), then steps timed
CALIBRATION_SKIP, CALIBRATION_STEPS = 2, 10
# the share of the remaining time the plan leaves unspent: later steps ran up to 1.5% slower than the timed
# ones (the fp32 demo on a 2-core AMD EPYC capped to AVX2: 207 of 209 planned steps fitted in the budget),
# and a plan that overruns is cut short of the end of its schedule
BUDGET_MARGIN = 0.03
# a run whose steps sped up after its timing (the timing saw a busy machine) is stretched to the steps the
# budget buys when they are this share more than planned, in the first half of its plan only
STRETCH_SHARE = 0.1
# a run whose budget is spent within the last 5% of its planned steps finishes them (its schedule ends at
# min_lr) unless that would overrun the budget by more than 5%
FINISH_SHARE = 0.05


def budget_steps(step: int, elapsed_s: float, s_per_step: float, budget_s: float, total_steps: int) -> int:
    """How many optimizer steps a run gets in all under a wall-clock budget.

    Args:
        step: steps done so far; elapsed_s: seconds they took; s_per_step: the measured time of one step;
        budget_s: the budget; total_steps: the steps of the full schedule (``epochs``), the upper bound.

    Returns:
        ``step`` plus the whole steps the remaining time less :data:`BUDGET_MARGIN` of it buys, at most
        ``total_steps``.
    """
    more = math.floor(max(budget_s - elapsed_s, 0.0) * (1 - BUDGET_MARGIN) / max(s_per_step, 1e-12))
    return max(step, min(total_steps, step + more))


class Budget:
    """``train.max_minutes`` during one call of ``Trainer.fit``: the time spent by the run over all its
    sessions, and the timing of ``CALIBRATION_STEPS`` steps that plans the schedule.

    Args:
        minutes: the budget (None: none; the time is still counted).
        clock: seconds from a monotonic clock (tests pass a fake one).
        elapsed_s: the time the run spent in earlier sessions.
        step: the optimizer steps done so far.
        planned: whether the run's schedule is planned already (a resumed run): then nothing is timed.
        device: the training device (on a GPU the clock is read after a synchronize when timing).
    """

    def __init__(self, minutes: float | None, clock: Callable[[], float], elapsed_s: float, step: int,
                 planned: bool, device: torch.device):  # fmt: skip
        self.seconds = minutes * 60 if minutes else None
        self.clock, self.device = clock, device
        self.elapsed0, self.t0 = elapsed_s, clock()
        self.calibrate_from = None if planned else step + CALIBRATION_SKIP
        self.timing_end = None if planned else step + CALIBRATION_SKIP + CALIBRATION_STEPS
        self.t_calibrate = 0.0

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation between steps) out of the time spent and out of the timing."""
        self.t0 += seconds
        self.t_calibrate += seconds

    def stop_timing(self) -> None:
        """The schedule is planned: no more timing."""
        self.calibrate_from = self.timing_end = None

    def after_step(self, step: int) -> tuple[float, float | None, bool]:
        """After optimizer ``step``: ``(seconds spent by the run, seconds per step over the steps timed so
        far or None, whether the timing is complete)``. On a GPU the timing's first and last readings
        synchronize (2 per run); the readings between them see the host's pace, which may run ahead."""
        timed = None if self.calibrate_from is None else step - self.calibrate_from
        if timed in (0, CALIBRATION_STEPS) and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = self.clock()
        elapsed = self.elapsed0 + now - self.t0
        if timed is None or timed < 0:
            return elapsed, None, False
        if timed == 0:
            self.t_calibrate = now
            return elapsed, None, False
        done = timed >= CALIBRATION_STEPS
        if done:
            self.stop_timing()
        return elapsed, (now - self.t_calibrate) / timed, done
