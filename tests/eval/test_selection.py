"""Fine-tuning's held-out part of its own training labels, the best checkpoint by it, and its probe."""

import dataclasses
import json
import logging
import math

import pytest
import torch
import torch.nn as nn

from mimkit.data.datasets import ImageDataset
from mimkit.engine import checkpoint as ckpt
from mimkit.eval.classifier import build_classifier
from mimkit.eval.finetune import finetune
from mimkit.eval.selection import BEST, BestOnHeldOut, below_probe_note, difference_se, holdout_parts

from .test_finetune import ENC, dataset, pretrained, recipe


def labeled(counts):
    """A dataset with ``counts[c]`` images of class ``c`` (image i is all i, to recognise it)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    names = [f"c{c}" for c in range(len(counts))]
    return ImageDataset(labels, names, 1, (8, 8), (0.3,), (0.2,), images=images)


def test_holdout_parts_per_class_at_least_one_at_most_the_cap():
    data = labeled([30, 4, 2, 200])
    fit, held = holdout_parts(data, 0.1, 12, seed=3)
    # round(0.1 n) -> 3, 0 -> 1, 0 -> 1, 20 -> 12 (the cap)
    assert torch.bincount(held.labels).tolist() == [3, 1, 1, 12]
    assert torch.bincount(fit.labels).tolist() == [27, 3, 1, 188]
    ids = lambda d: set(d.images[:, 0, 0, 0].tolist())  # noqa: E731
    assert ids(fit).isdisjoint(ids(held)) and len(ids(fit) | ids(held)) == len(data)
    assert torch.equal(holdout_parts(data, 0.1, 12, seed=3)[1].images, held.images)  # seeded
    assert holdout_parts(data, 0.0, 12, seed=3) == (data, None)


def test_a_class_too_small_to_split_is_one_line_naming_it():
    with pytest.raises(ValueError, match=r"class 'c1' has 1 training image\(s\).*needs 2 per class") as err:
        holdout_parts(labeled([5, 1, 1]), 0.1, 100, seed=0)
    assert "2 class(es) short" in str(err.value) and "holdout=0" in str(err.value)
    assert "\n" not in str(err.value)


class Scripted(nn.Module):
    """A model whose held-out accuracy follows a script, and whose weight records the epoch."""

    def __init__(self, scores):
        super().__init__()
        self.scores, self.weight = list(scores), nn.Parameter(torch.zeros(1))

    def accuracy(self, loader, transform, device):
        return self.scores.pop(0)


SCRIPT = [50.0, 70.0, 60.0, 70.0, 65.0]  # held-out top-1 at epochs 1-5


def test_best_on_held_out_keeps_the_best_epoch_ties_to_the_later(tmp_path):
    model = Scripted(SCRIPT)
    (tmp_path / ckpt.LAST).write_bytes(b"")  # the run has a checkpoint: best.pt is trusted on resume
    selector = BestOnHeldOut(labeled([2, 2]), nn.Identity(), torch.device("cpu"), tmp_path, {"config": 1})
    for epoch in range(1, 6):
        model.weight.data.fill_(epoch)
        assert selector.on_epoch_end(epoch, model) == {"holdout_top1": SCRIPT[epoch - 1]}
    assert (selector.best_epoch, selector.best_top1) == (4, 70.0)
    saved = ckpt.load_checkpoint(tmp_path / BEST)
    assert saved["epoch"] == 4 and saved["holdout_top1"] == 70.0 and saved["config"] == 1
    assert saved["model"]["weight"].item() == 4.0
    assert selector.restore(model) and model.weight.item() == 4.0
    # a later session of the run beats the best of the earlier ones, and restores from best.pt if none does
    again = BestOnHeldOut(labeled([2, 2]), nn.Identity(), torch.device("cpu"), tmp_path)
    assert (again.best_epoch, again.best_top1) == (4, 70.0)
    model.weight.data.fill_(9.0)
    assert again.restore(model) and model.weight.item() == 4.0
    fresh = BestOnHeldOut(labeled([2, 2]), nn.Identity(), torch.device("cpu"), tmp_path, resume=False)
    assert fresh.best_epoch == 0 and not fresh.restore(model)


def test_finetune_tests_the_best_checkpoint_and_reports_its_probe(tmp_path):
    cfg = dataclasses.replace(recipe(epochs=4), holdout=0.25)
    train, test = dataset(32), dataset(16, seed=1)
    clf = build_classifier(ENC, 2, pretrained(), cfg)
    result = finetune(clf, train, test, cfg, tmp_path)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    held = {r["epoch"]: r["holdout_top1"] for r in logged if "holdout_top1" in r}
    assert sorted(held) == [1, 2, 3, 4] and result["holdout_top1"] == max(held.values())
    assert held[result["best_epoch"]] == result["holdout_top1"]
    assert result["holdout_images"] == 8 and result["fit_images"] == 24 and result["train_images"] == 32
    # the test score is the best checkpoint's: a fresh classifier loaded from best.pt scores the same
    again = build_classifier(ENC, 2, None, cfg)
    again.load_state_dict(ckpt.load_checkpoint(tmp_path / BEST)["model"])
    for a, b in zip(again.state_dict().values(), clf.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    probe = result["probe"]
    assert probe["fit_images"] == 24 and 0 <= probe["holdout_top1"] <= 100 and 0 <= probe["test_top1"] <= 100
    assert json.loads((tmp_path / "probe.json").read_text()) == probe
    assert result["below_probe"] == (result["holdout_top1"] < probe["holdout_top1"])


def test_below_probe_note_on_held_out_with_its_standard_error():
    result = {"holdout_top1": 60.0, "holdout_images": 100, "test_top1": 90.0, "test_images": 500}
    result["probe"] = {"holdout_top1": 70.0, "test_top1": 80.0}
    note = below_probe_note(result)
    # sqrt(0.6 * 0.4 / 100 + 0.7 * 0.3 / 100) = 0.0671
    assert "held-out top-1 60.00% vs 70.00% (100 images, difference 10.0 +/- 6.7 points)" in note
    assert "train.epochs" in note and "mixup=0" in note and "\n" not in note
    assert below_probe_note({**result, "holdout_top1": 70.0}) is None  # level is not below
    no_holdout = {**result, "holdout_top1": None, "probe": {"holdout_top1": None, "test_top1": 95.0}}
    assert "test top-1 90.00% vs 95.00% (500 images" in below_probe_note(no_holdout)
    assert below_probe_note({**result, "probe": None}) is None
    assert difference_se(50.0, 50.0, 100) == pytest.approx(100 * math.sqrt(0.5 / 100))


def test_a_batch_larger_than_the_set_is_cut_and_said(tmp_path, caplog):
    cfg = dataclasses.replace(recipe(epochs=1, batch_size=64), compare_probe=False)
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        result = finetune(build_classifier(ENC, 2, pretrained(), cfg), dataset(20), dataset(8), cfg, tmp_path)
    # 2 held out (1 per class), 18 left: one step of 18
    lines = [r.getMessage() for r in caplog.records if "train.batch_size=64" in r.getMessage()]
    assert len(lines) == 1 and "the 18 images" in lines[0] and "cut to 18" in lines[0]
    assert result["steps"] == 1 and result["probe"] is None


def test_a_set_too_small_for_the_probes_own_holdout_fine_tunes_without_the_comparison(tmp_path, caplog):
    # 4 images, 2 per class; fine-tuning holds out 1 per class, leaving 1 per class: the probe would hold
    # out that one too (at least 1 per class) and have nothing to fit on
    cfg = recipe(epochs=1, batch_size=2)
    with caplog.at_level(logging.INFO, logger="mimkit"):
        result = finetune(
            build_classifier(ENC, 2, pretrained(), cfg), dataset(4), dataset(4, seed=1), cfg, tmp_path
        )
    assert result["fit_images"] == 2 and result["probe"] is None and not result["below_probe"]
    lines = [r.getMessage() for r in caplog.records if "no linear-probe comparison" in r.getMessage()]
    assert len(lines) == 1 and "2 training image(s) leave it none to fit on" in lines[0]
    assert not (tmp_path / "probe.json").exists()
