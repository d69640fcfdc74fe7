"""``mimkit sweep``: bad settings refused before anything is written; a 2 x 1 grid on a tiny class folder
whose second trial is interrupted (as by a kill: its run trained, the store still marks it RUNNING, a dead
process's lock left behind), then resumed under its own number, and a third invocation that runs nothing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from mimkit.cli import main
from mimkit.sweep import parse_setting
from mimkit.sweep.command import add_sweep_parser, spec_from_args
from mimkit.sweep.space import trial_config

from .conftest import TINY_MODEL

optuna = pytest.importorskip("optuna")

MAE = "configs/mae_fashion_mnist.yaml"
TINY = [
    *TINY_MODEL,
    "train.batch_size=16",  # 48 training images: 3 steps an epoch
    "train.epochs=2",
    "train.warmup_epochs=0",
    "train.progress=false",
    "train.tensorboard=false",
    "train.picture_every_minutes=0",
    "online_knn.every=1",
    "online_knn.k=5",
]
SCORING = ["--k", "5", "--linear-set", "epochs=2", "--steps", "6"]


def grey_folder(root, per_class=30, seed=0):
    """``root/<class>/<i>.png``: 16 px grey noise, each of 2 classes around its own brightness."""
    rng = np.random.default_rng(seed)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((16, 16)) * 100 + 120 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


def sweep(folder, out, *extra):
    return main(["sweep", str(folder), *TINY, *extra, "--config", MAE, *SCORING, "--out", str(out)])


def store(out):
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def mtimes(out):
    return {
        p.relative_to(out): p.stat().st_mtime_ns
        for p in out.glob("*/*")
        if p.name in ("last.pt", "sweep_result.json", "metrics.jsonl")
    }


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep's three invocations: (folder, sweep dir, what each left)."""
    base = tmp_path_factory.mktemp("sweep")
    folder, out = grey_folder(base / "imgs"), base / "sweep"
    grid = "method.mask_ratio=0.5,0.9"
    import mimkit.sweep.trial as trial_module

    real_score, calls = trial_module.score, []

    def interrupted_second(spec, run_dir, seed):  # the second trial is killed once its pretraining ended
        calls.append(run_dir.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(spec, run_dir, seed)

    trial_module.score = interrupted_second
    try:
        first = sweep(folder, out, grid)
    finally:
        trial_module.score = real_score
    after_first = {"code": first, "trials": [(t.number, t.state, dict(t.params)) for t in store(out)]}
    after_first["mtimes"] = mtimes(out)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (out / ".lock").write_text(
        json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename})
    )  # kill -9's
    second = sweep(folder, out, grid)
    after_second = {"code": second, "mtimes": mtimes(out), "trials": store(out)}
    third = sweep(folder, out, grid)
    after_third = {"code": third, "mtimes": mtimes(out), "trials": store(out)}
    return folder, out, after_first, after_second, after_third


def test_an_interrupted_trial_is_left_running_for_the_next_invocation(swept):
    _, _, first, _, _ = swept
    assert first["code"] == 130
    states = [(n, s) for n, s, _ in first["trials"]]
    assert states == [(0, optuna.trial.TrialState.COMPLETE), (1, optuna.trial.TrialState.RUNNING)]


def test_it_resumes_under_its_own_number_without_training_again(swept):
    _, out, first, second, _ = swept
    assert second["code"] == 0
    trials = second["trials"]
    assert [t.number for t in trials] == [0, 1]  # no duplicate of the interrupted trial
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.params["method.mask_ratio"] for t in trials) == ["0.5", "0.9"]  # each grid point once
    interrupted = next(p for p in first["mtimes"] if p.parts[0].startswith("001-") and p.name == "last.pt")
    assert second["mtimes"][interrupted] == first["mtimes"][interrupted]  # its checkpoint was not retrained
    finished = [p for p in first["mtimes"] if p.parts[0].startswith("000-")]
    assert finished and all(second["mtimes"][p] == first["mtimes"][p] for p in finished)


def test_a_third_invocation_runs_nothing(swept):
    _, _, _, second, third = swept
    assert third["code"] == 0
    assert third["mtimes"] == second["mtimes"]
    assert [(t.number, t.state) for t in third["trials"]] == [(t.number, t.state) for t in second["trials"]]


def test_every_run_reads_the_split_the_first_drew(swept):
    folder, out, _, _, _ = swept
    split = out / "split.json"
    held = json.loads(split.read_text())
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in sorted(out.glob("0*"))]
    assert len(configs) == 2 and all(c["data"]["split_file"] == str(split) for c in configs)
    assert not any((d / "split.json").exists() for d in out.glob("0*"))
    assert len(held["test"]) == 12  # 20% of each class of 30


def test_the_store_keeps_each_online_knn_curve_and_the_table_names_the_best(swept):
    _, out, _, second, _ = swept
    for t in second["trials"]:
        run = out / t.user_attrs["runs"][0]["run"]
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        curve = {r["epoch"]: r["knn_top1"] for r in logged if "knn_top1" in r}
        assert curve and t.intermediate_values == curve
        result = json.loads((run / "sweep_result.json").read_text())
        assert t.value == result["linear"] and result["steps"] == 6
    best = max(second["trials"], key=lambda t: t.value)
    table = (out / "sweep.md").read_text()
    assert f"best: method.mask_ratio={best.params['method.mask_ratio']}: linear {best.value:.2f}" in table


@pytest.mark.parametrize(
    "setting, message",
    [
        ("train.epohcs=1,2", "unknown config key 'train.epohcs'"),
        ("method.mask_ratoi=0.5,0.9", "unknown option(s) ['mask_ratoi'] for method 'mae'"),
        ("train.batch_size=16,big", "train.batch_size must be a positive integer, got 'big'"),
        ("method.mask_ratio=0.5,1.5", "sweep method.mask_ratio=1.5: mask_ratio must be in (0, 1)"),
        ("method.mask_ratio=0.5,,0.9", "an empty value in the list"),
        ("method.mask_ratio=", "no value"),
        ("method.mask_ratio=0.5,0.5", "0.5 is listed twice"),
        ("train.seed=0,1", "train.seed is set by the sweep"),
        ("method.name=mae,simmim", "method.name=simmim has no recipe"),
        ("data.root=/nonexistent/dir", "data.root '/nonexistent/dir' does not exist"),
    ],
)
def test_bad_settings_are_one_line_before_any_directory(setting, message, tmp_path, capsys):
    folder = grey_folder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "sweep"
    assert sweep(folder, out, setting) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_bad_scoring_setting_is_one_line_before_any_directory(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "method.mask_ratio=0.5,0.9",
        "--config",
        MAE,
        "--linear-set",
        "epoch=2",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "unknown config key 'epoch'" in capsys.readouterr().err and not out.exists()


def test_settings_read_as_axes_ranges_or_fixed_values():
    assert parse_setting("train.betas=[0.9,0.95],[0.9,0.999]").choices == ("[0.9,0.95]", "[0.9,0.999]")
    assert parse_setting("train.betas=[0.9,0.95]") is None  # one list: a fixed value
    blr = parse_setting("train.blr=1e-4:1e-2:log")
    assert (blr.low, blr.high, blr.log) == (1e-4, 1e-2, True)
    assert parse_setting("data.root=C:/images") is None
    with pytest.raises(ValueError, match="low < high"):
        parse_setting("method.mask_ratio=0.9:0.5")


def test_each_method_takes_its_own_recipe(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="command"))
    simmim = "configs/simmim_vit_fashion_mnist.yaml"
    args = parser.parse_args(
        ["sweep", "--config", MAE, "--config", simmim, "method.name=mae,simmim", "--steps", "3"]
    )
    spec, _ = spec_from_args(args)
    cfg, _ = trial_config(spec, {"method.name": "simmim"}, 1, tmp_path / "run", tmp_path / "split.json")
    recipe = yaml.safe_load(open(simmim))
    assert cfg.method == recipe["method"] and cfg.encoder == recipe["encoder"]
    assert (cfg.train.seed, cfg.train.max_steps, cfg.output_dir) == (1, 3, str(tmp_path / "run"))


def test_the_pruner_stops_a_trial_below_the_median_of_earlier_curves():
    from mimkit.sweep.study import _pruner, _reporter
    from mimkit.sweep.trial import Pruned

    study = optuna.create_study(direction="maximize", pruner=_pruner(True))
    for knn in (50.0, 60.0, 70.0):  # three whole curves: the median at epoch 1 is 60
        trial = study.ask()
        trial.report(knn, 1)
        study.tell(trial, knn)
    above, below = study.ask(), study.ask()
    _reporter(above, prune=True)(1, 65.0)
    with pytest.raises(Pruned, match="online kNN 55.00% at epoch 1"):
        _reporter(below, prune=True)(1, 55.0)
    _reporter(study.ask(), prune=False)(1, 10.0)  # not pruning: reported, never stopped


def test_a_trials_line_gives_its_scores_as_means_over_its_seeds():
    from types import SimpleNamespace

    from mimkit.sweep.study import _scores

    spec = SimpleNamespace(eval=SimpleNamespace(finetune=(0.1,)))
    runs = [
        {"knn": 70.0, "linear": 80.0, "finetune": {"0.1": 60.0}},
        {"knn": 71.0, "linear": 81.5, "finetune": {"0.1": 63.0}},
    ]
    line = _scores(spec, {"state": "complete", "runs": runs})
    assert line == "kNN 70.50, linear 80.75, fine-tune 10% 61.50"
    pruned = _scores(spec, {"state": "pruned", "runs": [], "message": "kNN 40.0 below the median 55.0"})
    assert pruned == "pruned (kNN 40.0 below the median 55.0)"
