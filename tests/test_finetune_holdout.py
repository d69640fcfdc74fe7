"""benchmarks/finetune_holdout.py: the held-out split, and a smoke run end to end on Fashion-MNIST."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mimkit.data.subsets import per_class_subset

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("finetune_holdout", ROOT / "benchmarks/finetune_holdout.py")
holdout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(holdout)


def test_holdout_split_per_class_disjoint_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)[
        torch.randperm(22, generator=torch.Generator().manual_seed(3))
    ]
    keep, held = holdout.holdout_split(labels, 2, seed=5)
    assert torch.bincount(labels[held], minlength=3).tolist() == [2, 2, 2]
    assert sorted(keep.tolist() + held.tolist()) == list(range(22))  # disjoint, and together everything
    again_keep, again_held = holdout.holdout_split(labels, 2, seed=5)
    assert torch.equal(held, again_held) and torch.equal(keep, again_keep)
    assert not torch.equal(held, holdout.holdout_split(labels, 2, seed=6)[1])
    with pytest.raises(ValueError, match="smallest class: 5"):
        holdout.holdout_split(labels, 5, seed=5)  # class 2 would have no training image left
    with pytest.raises(ValueError, match="at least 1"):
        holdout.holdout_split(labels, 0, seed=5)


def test_holdout_split_is_the_label_subset_draw_for_equal_classes():
    labels = torch.arange(60) % 3
    _, held = holdout.holdout_split(labels, 4, seed=123)
    assert torch.equal(held, per_class_subset(labels, 4 / 20, seed=123))


def test_bad_variant_is_one_parser_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        holdout.main(["run", "--out", str(tmp_path), "--variant", "crop_scale=[2, 1]"])
    assert exit_info.value.code == 2
    assert "crop_scale must be a pair" in capsys.readouterr().err


def test_smoke_run_scores_each_variant_on_the_held_out_images(tiny_mae_run, tmp_path, capsys):
    run = tiny_mae_run
    argv = [str(run), "--out", str(tmp_path / "holdout"), "--holdout", "5", "--train-limit", "300"]
    argv += ["--fractions", "1.0", "--epochs-scale", "0.2", "--device", "cpu"]
    argv += ["--variant", "crop_scale=[1.0, 1.0]", "--variant", "crop_scale=[0.35, 1.0]", "layer_decay=0.9"]
    assert holdout.main(argv) == 0
    printed = capsys.readouterr().out
    assert "crop_scale=[1.0, 1.0]:" in printed and "layer_decay=0.9:" in printed
    table = (tmp_path / "holdout" / "holdout.md").read_text()
    assert "Held out: 50 training images (5 per class" in table and "the other 250" in table
    assert table.count("\n| crop_scale=") == 2
    # each variant's run was scored on the 50 held-out images, with its own recipe
    for index, crop in enumerate(([1.0, 1.0], [0.35, 1.0])):
        run_dir = tmp_path / "holdout" / f"variant{index}" / "pretrained_100pct"
        assert json.loads((run_dir / "finetune.json").read_text())["test_images"] == 50
        assert json.loads((run_dir / "recipe.json").read_text())["crop_scale"] == crop


def test_random_init_scores_a_fresh_encoder_with_the_scratch_recipe(tiny_mae_run, tmp_path, capsys):
    argv = [str(tiny_mae_run), "--out", str(tmp_path / "scratch"), "--holdout", "5", "--train-limit", "300"]
    argv += ["--fractions", "1.0", "--epochs-scale", "0.2", "--device", "cpu", "--random-init"]
    argv += ["--variant", "train.blr=5e-4"]
    assert holdout.main(argv) == 0
    assert "train.blr=5e-4:" in capsys.readouterr().out
    assert "a random init of the encoder of" in (tmp_path / "scratch" / "holdout.md").read_text()
    variant = tmp_path / "scratch" / "variant0"
    assert not (variant / "pretrained_100pct").exists()  # only the random init was fine-tuned
    recipe = json.loads((variant / "random_100pct" / "recipe.json").read_text())
    assert recipe["layer_decay"] == 1.0 and recipe["train.blr"] == 5e-4
    stored = torch.load(variant / "random_100pct" / "last.pt", weights_only=True)["config"]
    assert stored["encoder"]["init"] == "random init"
