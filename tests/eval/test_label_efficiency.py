"""Per-class label subsets (exact counts, seeded, nested, written down) and the label-efficiency report."""

import csv
import json

import pytest
import torch
from PIL import Image

from mimkit.data.datasets import ImageDataset
from mimkit.data.subsets import label_subsets, per_class_subset, subset_dataset
from mimkit.engine.config import TrainConfig
from mimkit.eval.finetune import FinetuneConfig
from mimkit.eval.label_efficiency import (
    LabelEfficiencyOptions,
    finished_runs,
    fraction_note,
    run_label_efficiency,
    write_label_efficiency_report,
)
from mimkit.models import create_encoder

LABELS = torch.tensor([0] * 200 + [1] * 100 + [2] * 30)[
    torch.randperm(330, generator=torch.Generator().manual_seed(5))
]


@pytest.mark.parametrize(
    "fraction, counts", [(0.1, [20, 10, 3]), (0.01, [2, 1, 1]), (0.5, [100, 50, 15]), (1.0, [200, 100, 30])]
)
def test_exact_per_class_counts(fraction, counts):
    # round(fraction * n_c), at least one image per class
    idx = per_class_subset(LABELS, fraction, seed=0)
    assert torch.bincount(LABELS[idx], minlength=3).tolist() == counts
    assert len(set(idx.tolist())) == len(idx)


def test_seeded_reproducible_and_nested():
    a = per_class_subset(LABELS, 0.1, seed=7)
    assert torch.equal(a, per_class_subset(LABELS, 0.1, seed=7))
    assert not torch.equal(a, per_class_subset(LABELS, 0.1, seed=8))
    small = set(per_class_subset(LABELS, 0.02, seed=7).tolist())
    assert small <= set(a.tolist())  # the 2% subset is inside the 10% one
    state = torch.get_rng_state()
    per_class_subset(LABELS, 0.1, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not touched


def test_count_per_class_instead_of_a_fraction():
    idx = per_class_subset(LABELS, None, seed=7, count=40)
    assert torch.bincount(LABELS[idx], minlength=3).tolist() == [40, 40, 30]  # min(count, n_c)
    # the same draw as the fractions': 0.1 of class 1 is 10 images, the first 10 of its 40
    in_class_1 = set(idx[LABELS[idx] == 1].tolist())
    tenth = per_class_subset(LABELS, 0.1, seed=7)
    assert set(tenth[LABELS[tenth] == 1].tolist()) <= in_class_1
    for fraction, count in ((None, None), (0.1, 3)):
        with pytest.raises(ValueError, match="exactly one"):
            per_class_subset(LABELS, fraction, count=count)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        per_class_subset(LABELS, None, count=0)


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_fraction_outside_unit_interval_named(fraction):
    with pytest.raises(ValueError, match=f"label fraction {fraction!r} is outside"):
        per_class_subset(LABELS, fraction)


def test_subsets_written_and_read_back(tmp_path):
    path = tmp_path / "subsets.json"
    first = label_subsets(LABELS, [0.01, 0.1], seed=3, path=path)
    record = json.loads(path.read_text())
    assert record["seed"] == 3 and record["counts"] == {"0.01": 4, "0.1": 33}
    assert record["subsets"]["0.1"] == first[0.1].tolist()
    again = label_subsets(LABELS, [0.1, 0.5], seed=3, path=path)  # reuses 0.1, adds 0.5
    assert torch.equal(again[0.1], first[0.1]) and "0.5" in json.loads(path.read_text())["subsets"]
    with pytest.raises(ValueError, match="another seed"):
        label_subsets(LABELS, [0.1], seed=4, path=path)


def test_subset_dataset_keeps_metadata():
    images = torch.arange(330, dtype=torch.uint8).view(330, 1, 1, 1).expand(330, 1, 2, 2).contiguous()
    data = ImageDataset(LABELS, ["a", "b", "c"], 1, (2, 2), (0.5,), (0.2,), images=images)
    sub = subset_dataset(data, torch.tensor([3, 10]))
    assert len(sub) == 2 and sub.classes == data.classes and sub.mean == data.mean
    assert sub.images[:, 0, 0, 0].tolist() == [3, 10] and sub.labels.tolist() == LABELS[[3, 10]].tolist()


def test_pretrained_and_random_rows_written(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = (torch.rand(40, 1, 8, 8, generator=g) * 100).to(torch.uint8)
    images[labels == 1, :, :4] += 120
    train = ImageDataset(labels, ["a", "b"], 1, (8, 8), (0.3,), (0.2,), images=images)
    test = ImageDataset(labels[:16], ["a", "b"], 1, (8, 8), (0.3,), (0.2,), images=images[:16])
    enc_cfg = {
        "name": "vit_tiny_patch4_28",
        "img_size": [8, 8],
        "patch_size": 4,
        "embed_dim": 16,
        "depth": 1,
        "num_heads": 2,
    }
    encoder = create_encoder(**enc_cfg)
    cfg = FinetuneConfig(
        train=TrainConfig(
            epochs=1,
            batch_size=8,
            warmup_epochs=0,
            progress=False,
            tensorboard=False,
            precision="fp32",
            device="cpu",
        )
    )
    options = LabelEfficiencyOptions(fractions=[0.25, 1.0], recipe=cfg, epochs={0.25: 2})
    rows = run_label_efficiency(enc_cfg, encoder, train, test, tmp_path, options=options)
    # fraction by fraction, pretrained then random init
    assert [(r["init"], r["fraction"], r["labels"]) for r in rows] == [
        ("pretrained", 0.25, 10),
        ("random init", 0.25, 10),
        ("pretrained", 1.0, 40),
        ("random init", 1.0, 40),
    ]
    assert [r["epochs"] for r in rows] == [2, 2, 1, 1]
    # a later invocation finds every finished run (a run without finetune.json is not finished)
    (tmp_path / "random_100pct" / "finetune.json").unlink()
    found = finished_runs(tmp_path, [0.25, 0.5, 1.0])
    assert found == {(r["init"], r["fraction"]): r for r in rows[:3]}
    # the random-init rows train from scratch: no layer-wise lr decay; everything else as the recipe
    for run, decay in (("pretrained_25pct", 0.75), ("random_25pct", 1.0), ("random_100pct", 1.0)):
        stored = torch.load(tmp_path / run / "last.pt", weights_only=True)["config"]["finetune"]
        assert stored["layer_decay"] == decay
        assert stored["mixup"] == cfg.mixup and stored["smoothing"] == cfg.smoothing
    assert all(0 <= r["test_top1"] <= 100 for r in rows)
    with open(tmp_path / "label_efficiency.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    table = (tmp_path / "label_efficiency.md").read_text()
    assert "| pretrained |" in table and "| random init |" in table and "25% labels" in table
    assert (
        "Random init trains with layer_decay 1.0 (pretrained: 0.75); the rest of the recipe is the same."
        in table
    )
    with Image.open(tmp_path / "label_efficiency.png") as img:
        assert img.size[0] > 100
    assert json.loads((tmp_path / "label_subsets.json").read_text())["counts"] == {"0.25": 10, "1.0": 40}
    # each run's record for mimkit compare: its row, fraction, score and the images it trained on
    names = ("pretrained_25pct", "random_25pct", "pretrained_100pct", "random_100pct")
    for r, run in zip(rows, names, strict=True):
        record = json.loads((tmp_path / run / "evaluation.json").read_text())
        assert (record["encoder"], record["variant"]["label_fraction"]) == (r["init"], r["fraction"])
        assert (record["scores"]["top1"], record["data"]["train"]["images"]) == (r["test_top1"], r["labels"])
    # a later call for one fraction keeps the other fraction's finished run in the table, said so
    options = LabelEfficiencyOptions(fractions=[0.25], recipe=cfg, epochs={0.25: 2})
    run_label_efficiency(enc_cfg, encoder, train, test, tmp_path, options=options)
    table = (tmp_path / "label_efficiency.md").read_text()
    assert "| 25% labels | 100% labels |" in table
    # (runs this short may end at chance level, which the cells then say)
    p25, r25, p100 = (
        f"{r['test_top1']:.2f}" + " (at chance)" * r["at_chance"] + " (within chance)" * r["within_chance"]
        for r in rows[:3]
    )
    assert f"| pretrained | {p25} (10 img) | {p100} (40 img) |" in table
    assert f"| random init | {r25} (10 img) | - |" in table  # not finished
    assert "Read back from runs an earlier call finished in this folder: pretrained 100%." in table


def test_a_run_at_chance_is_marked_in_the_report(tmp_path):
    rows = [
        {"init": i, "fraction": f, "labels": n, "test_top1": t, "steps": 9, "epochs": 3, "at_chance": c}
        for i, f, n, t, c in (
            ("pretrained", 0.1, 6000, 88.37, False),
            ("random init", 0.1, 6000, 13.49, True),
            ("pretrained", 1.0, 60000, 91.61, False),
        )
    ]
    write_label_efficiency_report(rows, tmp_path, "a note")
    table = (tmp_path / "label_efficiency.md").read_text()
    assert "| random init | 13.49 (at chance) (6000 img) | - |" in table
    assert "| pretrained | 88.37 (6000 img) | 91.61 (60000 img) |" in table
    assert "(at chance): the training loss ended at chance level" in table and "a note" in table
    with open(tmp_path / "label_efficiency.csv") as f:
        assert [r["at_chance"] for r in csv.DictReader(f)] == ["False", "True", "False"]
    write_label_efficiency_report(rows[:1], tmp_path)  # nothing at chance: no mark, no explanation
    assert "at chance" not in (tmp_path / "label_efficiency.md").read_text()


def test_old_runs_are_checked_for_chance_from_their_log(tmp_path):
    # finetune.json files written before final_train_loss / chance_loss existed: the loss is read off the
    # run's metrics.jsonl (last tenth of the steps) and the chance level is ln(num_classes)
    old = {"test_top1": 10.0, "steps": 100, "epochs": 4, "train_images": 600, "test_images": 1000}
    for run, losses in (("random_1pct", [2.5, 2.31, 2.30]), ("pretrained_1pct", [2.2, 0.9, 0.6])):
        (tmp_path / run).mkdir()
        (tmp_path / run / "finetune.json").write_text(json.dumps(old))
        lines = [json.dumps({"step": step, "loss": v}) for step, v in zip((0, 50, 105), losses, strict=True)]
        (tmp_path / run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    # steps 0, 50, 105: only the last is past 0.9 * 105; 2.30 >= 0.99 ln 10 = 2.2796, 0.6 is not
    found = finished_runs(tmp_path, [0.01], num_classes=10)
    assert found[("random init", 0.01)]["at_chance"] is True
    assert found[("pretrained", 0.01)]["at_chance"] is False
    # without the class count there is no chance level to compare with: never flagged
    assert not any(r["at_chance"] for r in finished_runs(tmp_path, [0.01]).values())
    # with 100 classes ln 100 = 4.6: a loss of 2.30 learned something
    assert not any(r["at_chance"] for r in finished_runs(tmp_path, [0.01], num_classes=100).values())


def test_a_test_score_within_chance_is_marked_in_the_report(tmp_path):
    rows = [
        {"init": "pretrained", "fraction": 1.0, "labels": 90, "test_top1": 14.0, "steps": 9, "epochs": 3}
        | {"at_chance": False, "within_chance": True}
    ]
    write_label_efficiency_report(rows, tmp_path)
    table = (tmp_path / "label_efficiency.md").read_text()
    assert "| pretrained | 14.00 (within chance) (90 img) |" in table and "(within chance): the test" in table


def test_a_fraction_that_rounds_a_class_to_nothing_says_so():
    labels = torch.tensor([0] * 200 + [1] * 30 + [2] * 40)
    taken = len(per_class_subset(labels, 0.01, seed=0))  # round(2) = 2, round(0.3) = 0 -> 1, round(0.4) -> 1
    assert taken == 4
    note = fraction_note(labels, 0.01, taken)
    assert "1% of the labels would leave 2 class(es) without an image" in note
    assert "the run has 4 labels, 1.5% of the set" in note  # 4 / 270
    assert fraction_note(labels, 0.1, 27) is None


def test_each_fractions_recipe_follows_its_own_size(tmp_path, caplog):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    images = (torch.rand(200, 1, 8, 8, generator=g) * 100).to(torch.uint8)
    train = ImageDataset(labels, ["a", "b"], 1, (8, 8), (0.3,), (0.2,), images=images)
    test = ImageDataset(labels[:16], ["a", "b"], 1, (8, 8), (0.3,), (0.2,), images=images[:16])
    enc_cfg = {"name": "vit_tiny_patch4_28", "img_size": [8, 8], "patch_size": 4, "embed_dim": 16, "depth": 1}
    enc_cfg["num_heads"] = 2
    plan = ["train.max_steps=1", "train.device=cpu", "train.precision=fp32", "compare_probe=false"]
    options = LabelEfficiencyOptions(fractions=[0.02, 1.0], include_random=False, plan_overrides=plan)
    with caplog.at_level("WARNING", logger="mimkit"):
        run_label_efficiency(enc_cfg, create_encoder(**enc_cfg), train, test, tmp_path, options=options)
    small = json.loads((tmp_path / "pretrained_2pct" / "plan.json").read_text())
    whole = json.loads((tmp_path / "pretrained_100pct" / "plan.json").read_text())
    assert small["facts"]["images"] == 4 and whole["facts"]["images"] == 200
    batch = {p: next(c["value"] for c in r["choices"] if c["key"] == "train.batch_size") for p, r in
             (("small", small), ("whole", whole))}  # fmt: skip
    # 2% = 2 images per class, 1 held out: 2 to train on (batch 8, cut to 2); 100%: 180 -> batch 16
    assert batch == {"small": 8, "whole": 16}
    stored = torch.load(tmp_path / "pretrained_2pct" / "last.pt", weights_only=True)["config"]["finetune"]
    assert stored["holdout"] == 0.1 and stored["train"]["max_steps"] == 1
    said = [r.getMessage() for r in caplog.records if "label efficiency, 2%" in r.getMessage()]
    assert len(said) == 1 and "the smallest class has 2 image(s), under 5" in said[0]
    report = (tmp_path / "label_efficiency.md").read_text()
    assert "2% of the labels: the smallest class has 2 image(s)" in report
