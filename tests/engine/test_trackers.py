"""Experiment trackers: MLflow (local SQLite store) and W&B (offline) get the config, the trainer's metrics
at their steps across a resume, and the later commands' scores and picture; bad settings are one line."""

import json
import sys
import types
from pathlib import Path

import pytest

from mimkit.cli import main
from mimkit.engine.trackers import flatten

TINY = [
    "pretrain", "--config", "configs/mae_fashion_mnist.yaml", "data.limit=64", "train.epochs=2",
    "train.warmup_epochs=0", "train.batch_size=16", "train.precision=fp32", "train.progress=false",
    "train.tensorboard=false", "train.log_every=1", "encoder.embed_dim=32", "encoder.depth=1",
    "encoder.num_heads=2", "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2",
]  # fmt: skip


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_flatten_names_nested_keys():
    assert flatten({"train": {"lr": 0.1, "betas": [0.9, 0.95]}, "seed": 0}) == {
        "train.lr": "0.1", "train.betas": "[0.9, 0.95]", "seed": "0"
    }  # fmt: skip


def test_mlflow_follows_a_resumed_run_and_its_evaluations(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    run, store = tmp_path / "run", tmp_path / "mlruns"
    argv = [*TINY, f"train.mlflow={store}", f"output_dir={run}"]
    assert main([*argv, "train.max_steps=3"]) == 0
    assert main(argv) == 0  # resumed: the same tracker run goes on
    assert (
        main(["knn", str(run), "--train-limit", "100", "--test-limit", "50", "--k", "5", "--device", "cpu"])
        == 0
    )
    assert main(["reconstruct", str(run), "--out", str(tmp_path / "r.png"), "--num", "2"]) == 0
    ids = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = mlflow.tracking.MlflowClient(ids["uri"])
    assert ids["uri"] == f"sqlite:///{store.resolve() / 'mlflow.db'}"
    assert len(client.search_runs([client.get_experiment_by_name("mimkit").experiment_id])) == 1
    tracked = client.get_run(ids["run_id"])
    assert tracked.data.params["train.batch_size"] == "16" and tracked.data.params["method.name"] == "mae"
    history = [(m.step, m.value) for m in client.get_metric_history(ids["run_id"], "loss")]
    ours = losses(run)  # every logged step, once, across the resume
    assert [s for s, _ in sorted(history)] == [s for s, _ in ours] == list(range(1, 9))
    assert [v for _, v in sorted(history)] == pytest.approx([v for _, v in ours])
    assert "eval/knn_k5_token_pretrained" in tracked.data.metrics
    assert [a.path for a in client.list_artifacts(ids["run_id"])] == ["r.png"]


def test_wandb_gets_the_config_and_the_metrics_at_their_steps(tmp_path, monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"] += 1

    def init(**kwargs):
        calls["init"].append(kwargs)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Image=None))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    assert main([*TINY, "train.wandb=proj", "train.max_steps=3", f"output_dir={run}"]) == 0
    assert main([*TINY, "train.wandb=proj", f"output_dir={run}"]) == 0
    first, second = calls["init"]
    assert first["mode"] == "offline" and first["project"] == "proj" and first["dir"] == str(run)
    assert second["id"] == first["id"] and second["resume"] == "allow"  # the same W&B run after the resume
    assert first["config"]["train.batch_size"] == "16"
    logged = [(step, values["loss"]) for step, values in calls["log"] if "loss" in values]
    assert [s for s, _ in logged] == [s for s, _ in losses(run)] == list(range(1, 9))
    assert [v for _, v in logged] == pytest.approx([v for _, v in losses(run)]) and calls["finish"] == 2


def test_a_real_offline_wandb_run_writes_its_file(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main([*TINY, "train.wandb=proj", "train.max_steps=2", f"output_dir={run}"]) == 0
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]["run_id"]
    files = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0


def test_bad_tracker_settings_are_one_line(tmp_path, monkeypatch, capsys):
    assert main([*TINY, "train.mlflow=[a]", f"output_dir={tmp_path / 'a'}"]) == 2
    assert "train.mlflow must be a non-empty string or null" in capsys.readouterr().err
    for name in [
        "mlflow",
        "mlflow.entities",
        "mlflow.tracking",
        *[m for m in sys.modules if m.startswith("mlflow.")],
    ]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    assert main([*TINY, f"train.mlflow={tmp_path / 'ml'}", f"output_dir={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err
    assert "train.mlflow needs MLflow: pip install 'mimkit[mlflow]'" in err and "Traceback" not in err
    assert not (tmp_path / "b" / "last.pt").exists()


def test_a_tracker_that_fails_during_training_is_dropped_with_a_warning(tmp_path, monkeypatch, caplog):
    class Broken:
        def log(self, values, step):
            raise ConnectionError("disk full")

        def finish(self):
            pass

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Broken(), Image=None))
    run = tmp_path / "run"
    assert main([*TINY, "train.wandb=proj", f"output_dir={run}"]) == 0
    assert len(losses(run)) == 8 and (run / "last.pt").is_file()  # the run is whole
    assert "wandb tracking stopped: disk full" in caplog.text
