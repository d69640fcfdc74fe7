"""Experiment trackers beside ``metrics.jsonl`` and TensorBoard: MLflow and Weights & Biases.

``train.mlflow: DIR`` logs to a local MLflow store in ``DIR`` (``DIR/mlflow.db``, artifacts in
``DIR/artifacts``: no server; a tracking URI such as ``http://host:5000`` or ``sqlite:///x.db`` is used as
given). ``train.wandb: PROJECT`` logs to W&B in offline mode, under the run directory (``wandb sync`` it
later; ``WANDB_MODE=online`` logs live). Each is an optional extra (``mimkit[mlflow]``, ``mimkit[wandb]``).

The config is logged as parameters (flattened ``train.lr = ...``), the trainer's metrics at their steps,
and the tracker's run id is kept in ``<run>/trackers.json`` so that a resumed run continues the same
tracker run, and so that ``mimkit reconstruct`` (the picture) and the evaluation commands (their scores)
of that run add to it. Nothing is tracked unless asked; a tracker that fails to start is one warning,
never a lost training run.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from mimkit.engine.metrics import scalars

log = logging.getLogger("mimkit")

IDS = "trackers.json"
EXPERIMENT = "mimkit"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": "1"}`` (values as text, lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


class MLflowTracker:
    def __init__(self, target: str, run_dir: Path, run_id: str | None):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError("train.mlflow needs MLflow: pip install 'mimkit[mlflow]'") from None
        self._metric, self._param = Metric, Param
        if "://" in target or target.startswith("sqlite:"):
            uri, artifacts = target, None
        else:
            folder = Path(target).expanduser().resolve()
            folder.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
        self.uri = uri
        self.client = MlflowClient(uri)
        if run_id is None:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
            )
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            self.new = True
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.new = False
        self.run_id = run_id

    def ids(self) -> dict[str, str]:
        return {"uri": self.uri, "run_id": self.run_id}

    def log_params(self, params: dict[str, str]) -> None:
        if self.new:  # MLflow parameters are written once
            batch = [self._param(k, v[:6000]) for k, v in params.items()]
            for start in range(0, len(batch), 100):
                self.client.log_batch(self.run_id, params=batch[start : start + 100])

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(k, v, now, step) for k, v in values.items()])

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    def __init__(self, project: str, run_dir: Path, run_id: str | None, params: dict[str, str]):
        try:
            import wandb
        except ImportError:
            raise ImportError("train.wandb needs Weights & Biases: pip install 'mimkit[wandb]'") from None
        self._wandb = wandb
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=project, id=self.run_id, resume="allow", dir=str(run_dir), name=run_dir.name,
            mode=os.environ.get("WANDB_MODE", "offline"), config=params,
        )  # fmt: skip
        self.project = project

    def ids(self) -> dict[str, str]:
        return {"project": self.project, "run_id": self.run_id}

    def log_params(self, params: dict[str, str]) -> None:
        pass  # given to wandb.init as the run's config

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_file(self, path: Path) -> None:
        if path.suffix == ".png":
            self.run.log({path.stem: self._wandb.Image(str(path))})
        else:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of one run directory (none, MLflow, W&B), for the trainer or a later command."""

    def __init__(self, run_dir: str | os.PathLike, mlflow: str | None = None, wandb: str | None = None,
                 params: dict[str, Any] | None = None):  # fmt: skip
        self.run_dir = Path(run_dir)
        saved = self._saved()
        mlflow = mlflow or saved.get("mlflow", {}).get("uri")
        wandb = wandb or saved.get("wandb", {}).get("project")
        flat = flatten(params or {})
        self.active: dict[str, Any] = {}
        for name, target, start in (
            ("mlflow", mlflow, lambda t, i: MLflowTracker(t, self.run_dir, i)),
            ("wandb", wandb, lambda t, i: WandbTracker(t, self.run_dir, i, flat)),
        ):
            if not target:
                continue
            try:
                tracker = start(target, saved.get(name, {}).get("run_id"))
                tracker.log_params(flat)
            except ImportError:
                raise
            except Exception as err:  # noqa: BLE001 - a tracker never costs the training run
                log.warning("%s tracking off for this run: %s", name, str(err).splitlines()[0])
                continue
            self.active[name] = tracker
        if self.active:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ids = {**saved, **{name: t.ids() for name, t in self.active.items()}}
            (self.run_dir / IDS).write_text(json.dumps(ids, indent=2) + "\n")

    def _saved(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / IDS).read_text())
        except (OSError, ValueError):
            return {}

    def _each(self, call: str, *args: Any) -> None:
        """``tracker.call(*args)`` on every active tracker; one that fails is dropped with a warning."""
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, call)(*args)
            except Exception as err:  # noqa: BLE001 - a tracker never costs the training run
                log.warning("%s tracking stopped: %s", name, str(err).splitlines()[0] if str(err) else err)
                del self.active[name]

    def log_metrics(self, step: int, values: dict[str, Any]) -> None:
        numbers = scalars(values)
        if numbers:
            self._each("log_metrics", step, numbers)

    def log_file(self, path: str | os.PathLike) -> None:
        self._each("log_file", Path(path))

    def close(self) -> None:
        self._each("close")
        self.active = {}


def for_run(checkpoint: str | os.PathLike) -> Trackers | None:
    """The trackers a run was trained with, to add a later command's results (None if it had none)."""
    path = Path(checkpoint)
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / IDS).is_file():
        return None
    trackers = Trackers(run_dir)
    return trackers if trackers.active else None
