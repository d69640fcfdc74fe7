"""A top-1 that a constant guess could reach is marked as within chance, wherever a top-1 is printed."""

import argparse
import math

import pytest
import torch

from mimkit import eval_cli
from mimkit.eval.records import chance_level, chance_note, chance_se, within_chance
from mimkit.eval.selection import summary


def test_chance_level_is_the_largest_class_share():
    labels = torch.tensor([0] * 30 + [1] * 50 + [2] * 20 + [-1] * 5)  # unlabeled images do not count
    assert chance_level(labels) == {"top1": 50.0, "images": 100}


def test_within_chance_uses_two_binomial_standard_errors():
    chance = {"top1": 10.0, "images": 100}  # se = 100 sqrt(0.1 * 0.9 / 100) = 3.0 points
    assert chance_se(chance) == pytest.approx(3.0)
    assert within_chance(16.0, chance) and not within_chance(16.1, chance)
    assert within_chance(2.0, chance)  # below chance is within it too
    big = {"top1": 10.0, "images": 10_000}  # se 0.3: 11 % is no longer chance
    assert not within_chance(11.0, big)
    assert chance_note(12.0, chance) == (
        " (within chance: the largest class is 10.0% of the 100 test images, +/- 2 x 3.0 points)"
    )
    assert chance_note(50.0, chance) == "" and not within_chance(5.0, None)
    se = 100 * math.sqrt(0.5 * 0.5 / 20)
    assert chance_se({"top1": 50.0, "images": 20}) == pytest.approx(se)


def test_fine_tuning_summary_marks_its_score_and_its_probes():
    result = {"test_top1": 12.0, "holdout_top1": 20.0, "best_epoch": 3}
    result["chance"] = {"top1": 10.0, "images": 100}
    result["probe"] = {"holdout_top1": 25.0, "test_top1": 13.0}
    line = summary(result)
    assert line.startswith("test top-1 12.00% (within chance: the largest class is 10.0%")
    assert "its linear probe: held-out 25.00%, test 13.00% (within chance)" in line
    assert "within chance" not in summary({**result, "test_top1": 60.0, "probe": None})


def eval_main(argv):
    parser = argparse.ArgumentParser(prog="mimkit")
    eval_cli.add_eval_parsers(parser.add_subparsers(dest="command", required=True))
    return eval_cli.run_eval(parser.parse_args(["eval", *argv]))


def test_the_knn_and_linear_lines_say_within_chance(monkeypatch, capsys):
    chance = {"top1": 10.0, "images": 100}
    knn = {"random init": {"knn": {10: 12.0, 20: 30.0}, "chance": chance}}
    monkeypatch.setattr(eval_cli, "evaluate_knn", lambda *a, **k: knn)
    assert eval_main(["knn", "--encoder", "vit_tiny_patch16"]) == 0
    line = capsys.readouterr().out
    assert "k=10: 12.00% (within chance)  k=20: 30.00%;" in line and "the largest class is 10.0%" in line
    linear = {
        "pretrained": {
            "test_top1": 11.0, "chance": chance, "best_blr": 1.0, "holdout_images": 10,
            "holdout_top1": {1.0: 20.0}, "grid": {"stopped": "a single value: nothing to search"},
        }
    }  # fmt: skip
    monkeypatch.setattr(eval_cli, "evaluate_linear", lambda *a, **k: linear)
    assert eval_main(["linear", "--encoder", "vit_tiny_patch16"]) == 0
    assert "test top-1 11.00% (within chance: the largest class" in capsys.readouterr().out
