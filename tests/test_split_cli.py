"""A plain class folder (no test/ or val/) and an unlabeled folder beside a small labeled one, end to end
from the CLI: pretraining draws the held-out part once, says so, records it, leaves it out, and every
protocol scores on that same part."""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mimkit.cli import main
from mimkit.data import DataConfig
from mimkit.data.datasets import holdout_folder
from mimkit.data.splits import draw_split, read_split

from .conftest import TINY_MODEL
from .data.test_groups import scans

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_MODEL,
    "train.batch_size=12",  # 24 training images: 2 steps
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.progress=false",
    "train.tensorboard=false",
]


def rgb_folder(root: Path, classes: dict[str, int], seed: int = 0, mode: str = "RGB") -> Path:
    """``root/<class>/<i>.png``: 24 px noise, each class around its own brightness."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = (rng.random((24, 24, 3)) * 80 + 80 * c).astype(np.uint8)
            Image.fromarray(pixels if mode == "RGB" else pixels[..., 0]).save(root / name / f"{i}.png")
    return root


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def pretrain(argv: list[str]) -> tuple[int, list[str]]:
    """``mimkit pretrain`` with the tiny recipe; returns the exit code and the log lines."""
    handler, logger = Lines(), logging.getLogger("mimkit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # (setLevel, not the attribute: it clears the loggers' level caches)
    try:
        code = main(["pretrain", "--config", "configs/mae_fashion_mnist.yaml", *TINY, *argv])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return code, handler.lines


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """3 classes x 10 RGB PNGs in class folders, pretrained for 2 steps: (images, run, log lines)."""
    base = tmp_path_factory.mktemp("plain")
    images = rgb_folder(base / "imgs", {"a": 10, "b": 10, "c": 10})
    run = base / "run"
    code, lines = pretrain(["data.source=folder", f"data.root={images}", f"output_dir={run}"])
    assert code == 0
    return images, run, lines


def test_the_split_is_drawn_said_and_recorded(plain):
    images, run, lines = plain
    path = run / "split.json"
    said = [line for line in lines if line.startswith("held out ")]
    assert said == [
        f"held out 6 of 30 images (20%, stratified over 3 classes, seed 0) -> {path}; "
        "pretraining leaves them out"
    ]
    split = read_split(path)
    assert split.classes == ("a", "b", "c") and split.seed == 0 and split.holdout == 0.2
    assert {name: len([r for r in split.test if r.startswith(f"{name}/")]) for name in "abc"} == {
        "a": 2,
        "b": 2,
        "c": 2,
    }
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["split_file"] == str(path) and config["data"]["holdout"] == 0.2
    assert any("on folder (24 images)" in line for line in lines)  # 30 - 6 held out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2


def embedded(run: Path, tmp_path: Path, split: str) -> list[str]:
    out = tmp_path / f"{split}.npy"
    assert main(["embed", str(run), "--out", str(out), "--split", split]) == 0
    with open(out.with_suffix(".csv")) as f:
        return [row["path"] for row in csv.DictReader(f)]


def test_every_protocol_scores_on_the_same_held_out_part(plain, tmp_path, caplog, capsys):
    images, run, _ = plain
    split = read_split(run / "split.json")
    assert embedded(run, tmp_path, "test") == [str(images / rel) for rel in split.test]
    assert embedded(run, tmp_path, "train") == [str(images / rel) for rel in split.train]
    commands = [
        ["reconstruct", str(run), "--out", str(tmp_path / "r.png"), "--num", "4"],
        ["knn", str(run), "--k", "3", "--compare-random"],
        ["eval", "linear", str(run), "--out", str(tmp_path / "lin"), "--set", "epochs=2", "blrs=[0.1]"],
        ["eval", "tsne", str(run), "--out", str(tmp_path / "t.png"), "--perplexity", "2"],
    ]
    held_out = f"folder test split: 6 images from {images} (held-out part of {run / 'split.json'})"
    for argv in commands:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mimkit"):
            assert main(argv) == 0, argv
        assert any(r.getMessage().startswith(held_out) for r in caplog.records), argv
    assert "k=3:" in capsys.readouterr().out


def test_a_rerun_reuses_the_split_and_never_redraws_it(plain):
    images, run, _ = plain
    before = (run / "split.json").read_bytes()
    code, lines = pretrain(
        ["data.source=folder", f"data.root={images}", f"output_dir={run}", "train.epochs=2", "train.seed=5"]
    )
    assert code == 0 and (run / "split.json").read_bytes() == before
    assert any("as drawn before in" in line for line in lines)
    assert any("it is reused as it is" in line and "seed 5" in line for line in lines)


def test_a_separate_labeled_folder(tmp_path, capsys):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    rng = np.random.default_rng(1)
    for i in range(24):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(unlabeled / f"{i}.png")
    labeled = rgb_folder(tmp_path / "labeled", {"x": 5, "y": 5}, seed=2)
    run = tmp_path / "run"
    code, lines = pretrain(
        [
            "data.source=folder",
            f"data.root={unlabeled}",
            f"data.labeled_root={labeled}",
            "online_knn.every=1",
            "online_knn.k=2",
            f"output_dir={run}",
        ]
    )
    assert code == 0
    assert any(line.startswith("held out 2 of 10 images (20%, stratified over 2 classes") for line in lines)
    assert any("on folder (24 images)" in line for line in lines)  # the unlabeled folder, whole
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("knn_top1" in r for r in records)  # scored on the labeled held-out part while pretraining
    split = read_split(run / "split.json")
    assert embedded(run, tmp_path, "test") == [str(labeled / rel) for rel in split.test]
    assert main(["knn", str(run), "--k", "2"]) == 0 and "k=2:" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    lonely = rgb_folder(tmp_path / "lonely", {"a": 4, "b": 1})
    grey = rgb_folder(tmp_path / "grey", {"x": 3, "y": 3}, mode="L")
    rgb = rgb_folder(tmp_path / "rgb", {"x": 12, "y": 12})
    cases = [
        ([f"data.root={lonely}"], "class 'b' under"),
        ([f"data.root={rgb}", "data.holdout=1.5"], "data.holdout must be a fraction in (0, 1)"),
        ([f"data.root={rgb}", "data.holdout=0"], "a count of images per class >= 1"),
        ([f"data.root={rgb}", f"data.labeled_root={grey}"], "holds 1-channel images (x/0.png, ...)"),
        ([f"data.root={rgb}", "method.name=mea"], "unknown method 'mea'; valid: gmml, mae, simmim, sit"),
    ]
    for i, (argv, message) in enumerate(cases):
        code, _ = pretrain(["data.source=folder", *argv, f"output_dir={tmp_path / f'run{i}'}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("mimkit: error:") and message in err, (argv, err)
        assert "\n" not in err
    assert not (tmp_path / f"run{len(cases) - 1}").exists()  # a misspelt method: refused before any file


TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="needs torchrun")
def test_two_processes_draw_one_split_and_read_it(tmp_path):
    """Under torchrun the main process draws and writes the split; the other waits for it and reads it."""
    images = rgb_folder(tmp_path / "imgs", {"a": 10, "b": 10, "c": 10})
    run = tmp_path / "run"
    argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", *TINY, "train.batch_size=6"]
    argv += ["train.device=cpu", "data.source=folder", f"data.root={images}", f"output_dir={run}"]
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "mimkit.cli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("held out 6 of 30 images") == 1  # said once, by the process that wrote it
    cfg = DataConfig(source="folder", root=str(images))
    assert read_split(run / "split.json") == draw_split(*holdout_folder(cfg), 0.2, 0)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2  # 24 training images, 2 x 6 per step


# ----------------------------------------------------------------------------- by patient


def test_a_split_by_patient_is_drawn_recorded_and_read_by_every_protocol(tmp_path, caplog, capsys):
    """2 classes x 3 patients x 2 DICOM slices: round(0.2 * 3) = 1 patient of each class held out, its 2
    slices with it; knn and embed read exactly the recorded parts."""
    patients = {"P1": "ct", "P2": "ct", "P3": "ct", "P4": "mr", "P5": "mr", "P6": "mr"}
    root = scans(tmp_path / "scans", patients)
    run, path = tmp_path / "run", tmp_path / "run" / "split.json"
    data = ["data.source=folder", f"data.root={root}", "data.img_size=16", "encoder.patch_size=4"]
    code, lines = pretrain([*data, "data.group_by=patient", "train.batch_size=4", f"output_dir={run}"])
    assert code == 0
    said = (
        "held out 2 of 6 patients (4 of 12 images; 20% of each class's patients, stratified over 2 classes, "
        f"seed 0) -> {path}; pretraining leaves them out"
    )
    assert said in lines
    split = read_split(path)
    held = {split.groups[rel] for rel in split.test}
    assert split.group_by == "patient" and len(held) == 2
    assert not held & {split.groups[r] for r in split.train}
    assert held & {"P1", "P2", "P3"} and held & {"P4", "P5", "P6"}
    assert all(rel.split("/")[1].split("_")[0] == split.groups[rel] for rel in split.test + split.train)
    assert embedded(run, tmp_path, "test") == [str(root / rel) for rel in split.test]
    assert embedded(run, tmp_path, "train") == [str(root / rel) for rel in split.train]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mimkit"):
        assert main(["knn", str(run), "--k", "3"]) == 0
    held_out = f"folder test split: 4 images from {root} (held-out part of {path})"
    assert any(r.getMessage().startswith(held_out) for r in caplog.records)
    assert "k=3:" in capsys.readouterr().out


def test_grouping_bad_input_is_one_line(tmp_path, capsys):
    leaky = tmp_path / "leaky"
    scans(leaky / "train", {"P1": "ct", "P2": "mr"})
    scans(leaky / "test", {"P1": "ct", "P3": "mr"})  # P1 on both sides
    plain = rgb_folder(tmp_path / "plain", {"x": 3, "y": 3})
    (tmp_path / "short.csv").write_text("file,group\nx/0.png,g0\nx/1.png,g1\n")
    cases = [
        (
            [f"data.root={leaky}", "data.group_by=patient"],
            "puts 1 of its 3 patients (data.group_by=patient) on both sides, e.g. 'P1': train/ct/P1_0.dcm "
            "(training) and test/ct/P1_0.dcm (held out)",
        ),
        ([f"data.root={plain}", f"data.group_by={tmp_path / 'short.csv'}"], "misses 4 of the 6 files"),
        ([f"data.root={plain}", "data.group_by=patient"], "x/0.png under"),
        (["data.source=fashion_mnist", "data.group_by=file"], "data.source='fashion_mnist' has none"),
        ([f"data.root={plain}", "data.group_by=patients"], "data.group_by must be none, patient"),
    ]
    for i, (argv, message) in enumerate(cases):
        code, _ = pretrain(["data.source=folder", *argv, f"output_dir={tmp_path / f'run{i}'}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("mimkit: error:") and message in err, (argv, err)
        assert "\n" not in err


def test_reconstruct_on_an_unlabeled_folder_shows_training_images(tmp_path, capsys, caplog):
    """An unlabeled folder has no held-out part: the picture shows training images (said in one line),
    unless --split test asks for held-out ones, which is then the one-line error."""
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(unlabeled / f"{i}.png")
    run = tmp_path / "run"
    code, _ = pretrain(["data.source=folder", f"data.root={unlabeled}", f"output_dir={run}"])
    assert code == 0
    with caplog.at_level(logging.INFO, logger="mimkit"):
        assert main(["reconstruct", str(run), "--num", "2", "--out", str(tmp_path / "r.png")]) == 0
    assert any(r.getMessage().startswith("no held-out images (no test split under") for r in caplog.records)
    assert Image.open(tmp_path / "r.png").size[0] > 0
    assert main(["reconstruct", str(run), "--split", "test", "--out", str(tmp_path / "t.png")]) == 2
    assert "no test split under" in capsys.readouterr().err
