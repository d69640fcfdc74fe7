"""The held-out part of a labeled folder: drawn per class by a hand-checkable rule, recorded once, read by
every split of the data layer, and left out of pretraining."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from mimkit.data import DataConfig, build_dataset
from mimkit.data.datasets import check_labeled_kind, holdout_folder
from mimkit.data.splits import draw_split, held_out_count, read_split, write_split

SIZES = {"a": 10, "b": 5, "c": 3, "d": 2}  # images per class


def grey(path: Path, value: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (4, 4), value if mode == "L" else (value,) * 3).save(path)


def make_folder(root: Path, sizes=SIZES) -> Path:
    """``root/<class>/<i>.png``, one grey level per image, 20 * class index + i (read back)."""
    for c, (name, n) in enumerate(sizes.items()):
        for i in range(n):
            grey(root / name / f"{i}.png", 20 * c + i)
    return root


def split_of(root: Path, holdout=0.2, seed=0, path: Path | None = None) -> tuple[DataConfig, Path]:
    cfg = DataConfig(source="folder", root=str(root), normalize="none")
    path = path or root.parent / "split.json"
    write_split(draw_split(*holdout_folder(cfg), holdout, seed), path)
    return DataConfig(source="folder", root=str(root), normalize="none", split_file=str(path)), path


def per_class(paths) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rel in paths:
        counts[rel.split("/")[0]] = counts.get(rel.split("/")[0], 0) + 1
    return counts


@pytest.mark.parametrize(
    "n, holdout, expected",
    [
        (10, 0.2, 2),  # 2.0
        (3, 0.2, 1),  # 0.6 rounds to 1
        (2, 0.2, 1),  # 0.4 rounds to 0, raised to 1
        (5, 0.5, 3),  # 2.5: halves round up
        (3, 0.5, 2),  # 1.5 -> 2 = n - 1
        (2, 0.9, 1),  # 1.8 -> 2, lowered to n - 1
        (7, 2, 2),  # a count
        (7, 50, 6),  # a count above the class: all but one
    ],
)
def test_held_out_count_by_hand(n, holdout, expected):
    assert held_out_count(n, holdout) == expected


@pytest.mark.parametrize(
    "holdout, expected", [(0.2, {"a": 2, "b": 1, "c": 1, "d": 1}), (3, {"a": 3, "b": 3, "c": 2, "d": 1})]
)
def test_stratified_per_class(tmp_path, holdout, expected):
    cfg, path = split_of(make_folder(tmp_path / "imgs"), holdout)
    split = read_split(path)
    assert per_class(split.test) == expected
    assert per_class(split.train) == {name: SIZES[name] - expected[name] for name in SIZES}
    assert len(split.test) >= len(SIZES)  # at least one held-out image per class
    every = {f"{name}/{i}.png" for name, n in SIZES.items() for i in range(n)}
    assert set(split.train) | set(split.test) == every and not set(split.train) & set(split.test)
    record = json.loads(path.read_text())
    assert record["seed"] == 0 and record["holdout"] == holdout and record["classes"] == list(SIZES)
    assert record["counts"]["a"] == {"train": 10 - expected["a"], "test": expected["a"]}


def test_the_draw_depends_on_the_seed_and_the_names_only(tmp_path):
    root = make_folder(tmp_path / "imgs")
    cfg = DataConfig(source="folder", root=str(root))
    folder, files, labels, classes = holdout_folder(cfg)
    first = draw_split(folder, files, labels, classes, 0.2, seed=0)
    assert draw_split(folder, files[::-1], labels[::-1], classes, 0.2, seed=0) == first  # order: no matter
    assert draw_split(folder, files, labels, classes, 0.2, seed=1).test != first.test
    # another class's images do not move a class's draw
    (root / "b" / "0.png").unlink()
    folder, files, labels, classes = holdout_folder(cfg)
    again = draw_split(folder, files, labels, classes, 0.2, seed=0)
    assert [r for r in again.test if r.startswith("a/")] == [r for r in first.test if r.startswith("a/")]


def test_build_dataset_reads_the_two_parts(tmp_path):
    cfg, path = split_of(make_folder(tmp_path / "imgs"))
    split = read_split(path)
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test", train_dataset=train)
    alone = build_dataset(cfg, "test")  # without the training set: the same part and statistics
    root = tmp_path / "imgs"
    assert [p.relative_to(root).as_posix() for p in test.files] == list(split.test)
    assert [p.relative_to(root).as_posix() for p in train.files] == list(split.train)
    assert alone.files == test.files and alone.mean == test.mean == train.mean
    for ds in (train, test):
        values = ds.images[:, 0, 0, 0].tolist()  # 20 * class + i
        assert ds.labels.tolist() == [v // 20 for v in values]
        assert [f"{ds.classes[v // 20]}/{v % 20}.png" for v in values] == [
            p.relative_to(root).as_posix() for p in ds.files
        ]
    # the normalisation is the training part's: the mean of its grey levels, 20 * class + i, from the names
    levels = [20 * list(SIZES).index(rel.split("/")[0]) + int(rel[2:-4]) for rel in split.train]
    stats = build_dataset(dataclasses.replace(cfg, normalize="dataset"), "test")
    assert stats.mean[0] == pytest.approx(sum(levels) / len(levels) / 255, rel=1e-5)


def test_pretraining_leaves_the_held_out_part_out_unless_asked(tmp_path):
    cfg, path = split_of(make_folder(tmp_path / "imgs"))
    held = {str(tmp_path / "imgs" / rel) for rel in read_split(path).test}
    pre = build_dataset(cfg, "pretrain")
    assert len(pre) == 20 - 5 and not held & {str(p) for p in pre.files}
    cfg.holdout_in_pretraining = True
    assert len(build_dataset(cfg, "pretrain")) == 20
    assert len(build_dataset(cfg, "train")) == 15  # the evaluation's training part stays without them


def test_images_added_later_are_counted_not_mixed_in(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs")
    cfg, path = split_of(root)
    before = read_split(path)
    grey(root / "a" / "new.png", 200)
    grey(root / "e" / "0.png", 201)  # a new class too
    (root / before.test[0]).unlink()  # and a held-out file gone
    with caplog.at_level(logging.WARNING, logger="mimkit.data"):
        test = build_dataset(cfg, "test")
    assert [p.relative_to(root).as_posix() for p in test.files] == list(before.test[1:])
    assert "2 image(s) under" in caplog.text and "in neither part" in caplog.text
    assert "1 of the 5 test images listed" in caplog.text
    assert read_split(path) == before  # never redrawn


def test_an_existing_split_file_is_never_replaced(tmp_path):
    root = make_folder(tmp_path / "imgs")
    _, path = split_of(root, seed=0)
    text = path.read_text()
    folder, files, labels, classes = holdout_folder(DataConfig(source="folder", root=str(root)))
    other = draw_split(folder, files, labels, classes, 0.5, seed=7)
    assert write_split(other, path) == read_split(path) != other
    assert (
        path.read_text() == text and [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    )


def test_a_folder_with_its_own_test_folder_draws_nothing(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "val", {"a": 1})
    assert holdout_folder(DataConfig(source="folder", root=str(tmp_path))) is None
    grey(tmp_path / "flat" / "x.png", 0)  # unlabeled
    assert holdout_folder(DataConfig(source="folder", root=str(tmp_path / "flat"))) is None


def test_labeled_root_gives_train_and_test_and_pretraining_reads_root(tmp_path):
    for i in range(6):
        grey(tmp_path / "unlabeled" / f"u{i}.png", 250)
    labeled = make_folder(tmp_path / "unlabeled" / "labeled")  # inside root: its test part must stay out
    cfg = DataConfig(source="folder", root=str(tmp_path / "unlabeled"), labeled=False, normalize="none")
    cfg.labeled_root = str(labeled)
    path = tmp_path / "split.json"
    write_split(draw_split(*holdout_folder(cfg), 0.2, 0), path)
    cfg.split_file = str(path)
    split = read_split(path)
    pre = build_dataset(cfg, "pretrain")
    assert len(pre) == 6 + 15 and not {str(labeled / r) for r in split.test} & {str(p) for p in pre.files}
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.classes == test.classes == list(SIZES) and len(train) == 15 and len(test) == 5
    assert [p.relative_to(labeled).as_posix() for p in test.files] == list(split.test)


def one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    assert "\n" not in str(err.value)
    for part in parts:
        assert part in str(err.value), (part, str(err.value))


@pytest.mark.parametrize("holdout", [0, 0.0, 1.0, 1.5, -0.2, -3, True, "0.2"])
def test_bad_holdout_is_one_line(holdout):
    with pytest.raises(ValueError) as err:
        DataConfig(holdout=holdout)
    one_line(err, "data.holdout", "(0, 1)", ">= 1", repr(holdout))


@pytest.mark.parametrize("holdout", [0.2, 0.5, 1, 50, None])
def test_good_holdout(holdout):
    assert DataConfig(holdout=holdout).holdout == holdout


def test_a_class_of_one_image_is_one_line_naming_it(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 4, "lonely": 1})
    with pytest.raises(ValueError) as err:
        draw_split(*holdout_folder(DataConfig(source="folder", root=str(root))), 0.2, 0)
    one_line(err, "class 'lonely'", "single image", "data.holdout=null", str(root / "lonely"))


def test_bad_split_files_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        read_split(tmp_path / "missing.json")
    one_line(err, "missing.json", "data.split_file")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError) as err:
        read_split(tmp_path / "bad.json")
    one_line(err, "bad.json", "not a mimkit split file")


def test_a_split_of_another_folder_is_one_line(tmp_path):
    cfg, path = split_of(make_folder(tmp_path / "imgs"))
    other = make_folder(tmp_path / "other", {"x": 3, "y": 3})
    with pytest.raises(ValueError) as err:
        build_dataset(DataConfig(source="folder", root=str(other), split_file=str(path)), "test")
    one_line(err, "none of the 15 train images", str(tmp_path / "imgs"), str(path))  # stats: train part first


def test_labeled_images_of_another_kind_are_one_line(tmp_path):
    for i in range(4):
        grey(tmp_path / "grey" / "a" / f"{i}.png", i)
        grey(tmp_path / "rgb" / "a" / f"{i}.png", i, "RGB")
    cfg = DataConfig(source="folder", root=str(tmp_path / "grey"), labeled_root=str(tmp_path / "rgb"))
    with pytest.raises(ValueError) as err:
        check_labeled_kind(cfg, 1, torch.uint8)
    one_line(err, str(tmp_path / "rgb"), "3-channel", "have 1", "data.channels=1")
    with pytest.raises(ValueError) as err:
        check_labeled_kind(cfg, 3, torch.uint16)
    one_line(err, "8-bit", "16-bit")
    check_labeled_kind(cfg, 3, torch.uint8)  # the same kind
    cfg.channels = 1
    check_labeled_kind(cfg, 1, torch.uint8)  # asked for: RGB converts to grey


def test_another_native_size_is_said(tmp_path, caplog):
    grey(tmp_path / "labeled" / "a" / "0.png", 0)  # 4x4
    cfg = DataConfig(source="folder", root=str(tmp_path), labeled_root=str(tmp_path / "labeled"))
    with caplog.at_level(logging.INFO, logger="mimkit.data"):
        check_labeled_kind(cfg, 1, torch.uint8, (4, 4))
        assert "resized" not in caplog.text
        check_labeled_kind(cfg, 1, torch.uint8, (8, 6))
    assert "the labeled images (a/0.png: 4x4) are resized to the run's 8x6 (center_crop)" in caplog.text
