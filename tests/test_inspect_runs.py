"""``mimkit compare`` and ``mimkit attention`` end to end on a tiny Fashion-MNIST run, and their one-line
errors."""

import csv
import json
import os
import shutil

import pytest
from PIL import Image

from mimkit.cli import main

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="dataset-fashion-mnist is not installed")
LIMITS = ["--train-limit", "300", "--test-limit", "100"]


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("mimkit: error: ")
    return err[-1]


def test_compare_reads_the_recorded_knn_and_refuses_other_held_out_images(tiny_mae_run, tmp_path, capsys):
    run = tmp_path / "a"
    shutil.copytree(tiny_mae_run, run)
    assert main(["knn", str(run), "--k", "5", *LIMITS]) == 0
    recorded = json.loads((run / "eval" / "knn" / "pretrained_token" / "evaluation.json").read_text())
    assert recorded["data"]["test"]["images"] == 100 and recorded["data"]["train"]["images"] == 300
    other = tmp_path / "b"
    shutil.copytree(run, other)  # the same run, evaluated on the same images: one column
    (other / "eval" / "finetune").mkdir()
    (other / "eval" / "finetune" / "finetune.json").write_text("{}")  # from before the records
    capsys.readouterr()
    assert main(["compare", str(run), str(other), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    score = f"{recorded['scores']['k=5']:.2f}"
    assert f"| {run} | mae | vit_tiny_patch4_28 |" in out and out.count(f"| {score} |") == 2
    assert f"{other}: eval/finetune was evaluated before mimkit recorded evaluations" in out
    with open(tmp_path / "out" / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["kNN k=5 (token)"]) for r in rows] == [round(recorded["scores"]["k=5"], 4)] * 2
    # b scored on 50 held-out images: not put next to a's 100
    assert main(["knn", str(other), "--k", "5", "--train-limit", "300", "--test-limit", "50"]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), str(other), "--out", str(tmp_path / "out")]) == 2
    line = error_line(capsys)
    assert f"kNN (token): held-out images (images: {run} 100, {other} 50)" in line
    assert main(["compare", str(run), str(other), "--out", str(tmp_path / "out"), "--mixed"]) == 0
    assert "| kNN k=5 (token) * |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, said",
    [
        (["compare", "{run}", "{run}"], "is given twice: give each run once"),
        (["compare", "{tmp}"], "is not a pretraining run directory (no config.yaml)"),
        (
            ["attention", "{run}", "--images", "0"],
            "--images must be in [1, 10000] (the held-out split), got 0",
        ),
        (
            ["attention", "{run}", "--block", "7"],
            "block must be 'all' or an index in [-2, 1] (2 blocks), got 7",
        ),
    ],
)
def test_bad_input_is_one_line(tiny_mae_run, tmp_path, capsys, argv, said):
    argv = [a.format(run=tiny_mae_run, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert said in error_line(capsys)


def test_attention_pictures_of_held_out_images_and_given_files(tiny_mae_run, tmp_path, capsys):
    out = tmp_path / "maps"
    assert main(["attention", str(tiny_mae_run), "--images", "2", "--block", "all", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention_test00000.png", "attention_test00001.png"]
    with Image.open(out / "attention_test00000.png") as img:
        width, height = img.size
    assert width > height  # 2 block rows of 4 panels: image, mean of heads, 2 heads
    given = tmp_path / "shoe.png"
    Image.new("L", (40, 30), 128).save(given)  # another size: resized as the run's images are
    assert main(["attention", str(tiny_mae_run), str(given), "--out", str(out)]) == 0
    assert (out / "attention_shoe.png").is_file()
    assert "wrote 1 picture(s)" in capsys.readouterr().out
