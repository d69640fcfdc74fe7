"""Runs side by side from their evaluation records: the table holds the recorded scores, scores measured
on other data or with other settings are refused in one line (or marked with ``mixed``), and the
data fingerprint tells held-out splits apart."""

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from mimkit.data.datasets import ImageDataset
from mimkit.eval.compare import RunRecords, compare, markdown, write_comparison
from mimkit.eval.evaluation_record import (
    data_fingerprint,
    read_evaluation,
    split_fingerprint,
    write_evaluation,
)

DATA = {
    "img_size": [28, 28],
    "channels": 1,
    "train": {"images": 300, "classes": 10, "sha256": "aaaa"},
    "test": {"images": 100, "classes": 10, "sha256": "bbbb"},
}


def record(tmp_path, protocol, scores, encoder="pretrained", variant=None, settings=None, data=None):
    """An evaluation record as the protocols write it, read back from its file."""
    variant = variant or ({"pool": "token"} if protocol != "finetune" else {"label_fraction": 1.0})
    where = tmp_path / f"{protocol}-{encoder}-{len(list(tmp_path.iterdir()))}"
    path = write_evaluation(
        where,
        protocol=protocol,
        encoder=encoder,
        variant=variant,
        settings=settings or {"precision": "fp32"},
        data=data or DATA,
        scores=scores,
    )
    return {**read_evaluation(path), "where": where.name}


def finetune(tmp_path, fraction, top1, encoder="pretrained", layer_decay=0.75):
    settings = {"layer_decay": layer_decay, "train": {"epochs": 5, "device": "cpu"}}
    return record(tmp_path, "finetune", {"top1": top1}, encoder, {"label_fraction": fraction}, settings)


def test_the_table_holds_the_recorded_scores(tmp_path):
    a = RunRecords(
        "runs/a",
        "mae",
        "vit_tiny",
        losses=[(10, 0.9), (20, 0.5)],
        evaluations=[
            record(tmp_path, "knn", {"k=20": 81.5, "k=5": 80.25}),
            record(tmp_path, "linear", {"top1": 84.0}),
            finetune(tmp_path, 0.1, 70.0),
            finetune(tmp_path, 1.0, 90.0),
            finetune(tmp_path, 0.1, 40.0, "random init", layer_decay=1.0),  # its own recipe: not a mix
        ],
    )
    b = RunRecords(
        "runs/b",
        "simmim",
        "vit_tiny",
        losses=[(15, 0.3)],
        evaluations=[record(tmp_path, "knn", {"k=20": 77.0, "k=5": 75.0}), finetune(tmp_path, 0.1, 65.5)],
    )
    result = compare([a, b])
    assert result.columns == [
        "kNN k=5 (token)", "kNN k=20 (token)", "linear (token)", "fine-tune 10%", "fine-tune 100%",
    ]  # fmt: skip
    assert [r["run"] for r in result.rows] == ["runs/a", "runs/a (random init)", "runs/b"]
    row_a, row_random, row_b = result.rows
    assert (row_a["steps"], row_a["final loss"], row_b["steps"], row_b["final loss"]) == (20, 0.5, 15, 0.3)
    assert [row_a[c] for c in result.columns] == [80.25, 81.5, 84.0, 70.0, 90.0]
    assert [row_random[c] for c in result.columns] == [None, None, None, 40.0, None]
    assert [row_b[c] for c in result.columns] == [75.0, 77.0, None, 65.5, None]
    assert result.marked == {}
    # what runs/b lacks, with the command that records it
    assert "runs/b: no linear (token) recorded: run `mimkit eval linear runs/b --pool token`" in result.notes
    assert "runs/b: no fine-tune 100% recorded: run `mimkit eval finetune runs/b`" in result.notes
    table = markdown(result)
    assert "| runs/a | mae | vit_tiny | 20 | 0.5 | 80.25 | 81.50 | 84.00 | 70.00 | 90.00 |" in table
    assert "| runs/b | simmim | vit_tiny | 15 | 0.3 | 75.00 | 77.00 | - | 65.50 | - |" in table
    paths = write_comparison(result, [a, b], tmp_path / "out")
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["fine-tune 10%"]) for r in rows] == [70.0, 40.0, 65.5]
    assert rows[2]["linear (token)"] == ""
    assert set(paths) == {"md", "csv", "losses", "frozen", "label_efficiency"}
    for name in ("losses", "frozen", "label_efficiency"):
        with Image.open(paths[name]) as img:
            assert img.size[0] >= 300


def test_other_held_out_images_are_refused_in_one_line_or_marked(tmp_path):
    other = {**DATA, "test": {**DATA["test"], "sha256": "cccc"}}
    a = RunRecords("runs/a", evaluations=[record(tmp_path, "knn", {"k=20": 80.0})])
    b = RunRecords("runs/b", evaluations=[record(tmp_path, "knn", {"k=20": 70.0}, data=other)])
    with pytest.raises(ValueError) as err:
        compare([a, b])
    message = str(err.value)
    assert "\n" not in message
    assert "kNN (token): held-out images (runs/b: as many, but other images than runs/a's)" in message
    assert "--mixed" in message
    result = compare([a, b], mixed=True)
    assert list(result.marked) == ["kNN k=20 (token)"]
    assert "| kNN k=20 (token) * |" in markdown(result)
    assert "compared anyway: kNN (token): held-out images" in markdown(result)
    paths = write_comparison(result, [a, b], tmp_path / "out")
    assert paths["csv"].read_text().splitlines()[0].endswith("kNN k=20 (token) *")


@pytest.mark.parametrize(
    "theirs, said",
    [
        ({"settings": {"epochs": 10, "precision": "fp32"}}, "linear (token): epochs (runs/a 90, runs/b 10)"),
        ({"data": {**DATA, "img_size": [32, 32]}}, "linear (token): image size (runs/a 28x28, runs/b 32x32)"),
        (
            {"data": {**DATA, "train": {"images": 30, "classes": 10, "sha256": "dddd"}}},
            "linear (token): training images (images: runs/a 300, runs/b 30)",  # the count, not the hash
        ),
    ],
)
def test_what_differs_is_named(tmp_path, theirs, said):
    mine = {"settings": {"epochs": 90, "precision": "fp32"}}
    a = RunRecords("runs/a", evaluations=[record(tmp_path, "linear", {"top1": 80.0}, **mine)])
    b = RunRecords("runs/b", evaluations=[record(tmp_path, "linear", {"top1": 81.0}, **{**mine, **theirs})])
    with pytest.raises(ValueError, match="not evaluated alike") as err:
        compare([a, b])
    assert said + ". Evaluate them alike" in str(err.value)


def test_a_run_without_evaluations_gets_the_commands(tmp_path):
    a = RunRecords("runs/a", evaluations=[record(tmp_path, "knn", {"k=20": 80.0})])
    b = RunRecords("runs/b", "mae", losses=[(5, 1.0)])
    result = compare([a, b])
    assert result.rows[1] == {"run": "runs/b", "method": "mae", "encoder": None, "steps": 5,
                              "final loss": 1.0, "kNN k=20 (token)": None}  # fmt: skip
    assert any(
        n.startswith("runs/b has no recorded evaluation: run `mimkit knn runs/b`") for n in result.notes
    )


def test_a_later_record_of_one_column_wins_and_is_said(tmp_path):
    first = record(tmp_path, "finetune", {"top1": 60.0}, variant={"label_fraction": 1.0})
    later = {
        **record(tmp_path, "finetune", {"top1": 62.0}, variant={"label_fraction": 1.0}),
        "written": "9999",
    }
    result = compare([RunRecords("runs/a", evaluations=[later, first])])
    assert result.rows[0]["fine-tune 100%"] == 62.0
    assert any("recorded twice" in note for note in result.notes)


def images_dataset(images, labels, root="", files=None):
    return ImageDataset(labels, ["a", "b"], 1, (4, 4), (0.5,), (0.2,), images=images, files=files, root=root)


def test_the_fingerprint_follows_pixels_labels_and_file_names(tmp_path):
    g = torch.Generator().manual_seed(0)
    images, labels = (torch.rand(6, 1, 4, 4, generator=g) * 255).to(torch.uint8), torch.tensor([0, 1] * 3)
    same = split_fingerprint(images_dataset(images.clone(), labels.clone()))
    assert same == split_fingerprint(images_dataset(images, labels))
    assert same["images"] == 6 and same["classes"] == 2
    changed = images.clone()
    changed[3, 0, 2, 2] ^= 1  # one bit of one pixel
    assert split_fingerprint(images_dataset(changed, labels))["sha256"] != same["sha256"]
    assert split_fingerprint(images_dataset(images, labels.flip(0)))["sha256"] != same["sha256"]
    # files: their names under the root and their sizes, wherever the folder lies
    prints = []
    for where in ("one", "two"):
        root = tmp_path / where
        files = []
        for i, size in enumerate((10, 20)):
            (root / "a").mkdir(parents=True, exist_ok=True)
            files.append(root / "a" / f"{i}.png")
            files[-1].write_bytes(b"x" * size)
        prints.append(split_fingerprint(images_dataset(None, torch.tensor([0, 0]), str(root), files)))
    assert prints[0] == prints[1]
    Path(tmp_path / "two" / "a" / "1.png").write_bytes(b"x" * 21)
    assert (
        split_fingerprint(images_dataset(None, torch.tensor([0, 0]), str(tmp_path / "two"), files))
        != prints[0]
    )
    both = data_fingerprint(images_dataset(images, labels), images_dataset(images[:2], labels[:2]))
    assert (both["img_size"], both["channels"], both["test"]["images"]) == ([4, 4], 1, 2)


def test_a_record_of_another_format_is_refused(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_text('{"format": "other/9"}')
    with pytest.raises(ValueError, match="not a mimkit-evaluation/1 record"):
        read_evaluation(path)
