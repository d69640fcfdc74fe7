"""Held-out parts drawn by group (patient, study, series, file, a CSV): hand-worked draws, the invariants
under every seed, the record, and the one-line refusals (leaks, bad group files, missing DICOM tags)."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimkit.data import DataConfig, build_dataset
from mimkit.data.datasets import holdout_folder
from mimkit.data.groups import (
    check_explicit_split,
    check_recorded_split,
    draw_for,
    sample_groups,
    source_of,
    split_by_groups,
)
from mimkit.data.splits import Split, draw_split, read_split, write_split


def order(seed: int, names) -> list[str]:
    """The groups in the order the rule holds them out: by SHA-256("seed NUL name"), worked out here."""
    return sorted(names, key=lambda g: hashlib.sha256(f"{seed}\0{g}".encode()).digest())


def first(seed: int, names) -> str:
    return order(seed, names)[0]


def samples(spec: dict[str, dict[str, int]]) -> tuple[list[str], list[int], list[str], dict[str, str]]:
    """``{group: {class: n}}`` -> ids ``class/group_i.png``, labels, classes, ``{id: group}``."""
    classes = sorted({c for per in spec.values() for c in per})
    ids, labels, groups = [], [], {}
    for g, per in spec.items():
        for c, n in per.items():
            for i in range(n):
                rel = f"{c}/{g}_{i}.png"
                ids.append(rel)
                labels.append(classes.index(c))
                groups[rel] = g
    return ids, labels, classes, groups


def draw(spec, holdout=0.2, seed=0, by="patient"):
    ids, labels, classes, groups = samples(spec)
    return split_by_groups("/x", ids, labels, classes, groups, holdout, seed, by), groups


def sides(split, groups) -> tuple[set[str], set[str]]:
    return {groups[r] for r in split.train}, {groups[r] for r in split.test}


def test_three_patients_with_both_classes(tmp_path):
    """3 patients x 2 classes x 4 images: every patient ties, goes with class a (equal sizes: the first),
    class a holds out round(0.2 * 3) = 1 patient, class b none of its own; b's images follow theirs."""
    spec = {p: {"a": 4, "b": 4} for p in ("P0", "P1", "P2")}
    for seed in range(6):
        split, groups = draw(spec, seed=seed)
        train, test = sides(split, groups)
        assert test == {first(seed, ["P0", "P1", "P2"])} and train == {"P0", "P1", "P2"} - test
        assert len(split.test) == 8 and len(split.train) == 16  # 1 patient x 2 classes x 4
        assert split.counts() == {"a": {"train": 8, "test": 4}, "b": {"train": 8, "test": 4}}
        assert split.summary() == (
            f"held out 1 of 3 patients (8 of 24 images; 20% of each class's patients, stratified over 2 "
            f"classes, seed {seed})"
        )


@pytest.mark.parametrize("holdout, per_class", [(0.34, 1), (0.5, 2), (1, 1), (2, 2), (9, 2)])
def test_counts_follow_the_rule_per_class_of_groups(holdout, per_class):
    """Class a in P0-P2, class b in P3-P5, P_i holding i + 1 images: per class of 3 patients,
    round(holdout * 3) or the count, in [1, 2]; the images held out are those patients' images."""
    spec = {f"P{i}": {"a" if i < 3 else "b": i + 1} for i in range(6)}
    draws = set()
    for seed in range(8):
        split, groups = draw(spec, holdout, seed)
        train, test = sides(split, groups)
        assert not train & test and train | test == set(spec)
        assert len(test & {"P0", "P1", "P2"}) == len(test & {"P3", "P4", "P5"}) == per_class
        a, b = order(seed, ["P0", "P1", "P2"]), order(seed, ["P3", "P4", "P5"])
        assert test == set(a[:per_class]) | set(b[:per_class])
        assert len(split.test) == sum(int(g[1]) + 1 for g in test)
        draws.add(tuple(split.test))
    assert len(draws) > 1  # the seed changes the draw (the invariants above hold for each)


def test_a_group_goes_with_its_majority_class_ties_with_the_rarer():
    """P0 ties 1 a / 1 b and b is the rarer class (3 images against 7): P0 goes with b, so each class owns
    two patients and holds one out. Had it gone with a, b would own one and hold none out."""
    spec = {"P0": {"a": 1, "b": 1}, "P1": {"a": 3}, "P2": {"a": 3}, "P3": {"b": 2}}
    for seed in range(8):
        split, groups = draw(spec, holdout=1, seed=seed)
        _, test = sides(split, groups)
        assert test == {first(seed, ["P1", "P2"]), first(seed, ["P0", "P3"])}


def test_group_by_file_on_plain_ids_is_the_per_image_draw(tmp_path):
    for c, n in {"a": 7, "b": 4}.items():
        for i in range(n):
            grey(tmp_path / "imgs" / c / f"{i}.png", i)
    cfg = DataConfig(source="folder", root=str(tmp_path / "imgs"), group_by="file")
    found = holdout_folder(cfg)
    for seed in (0, 3):
        grouped, plain = draw_for(cfg, *found, seed), draw_split(*found, 0.2, seed)
        assert (grouped.train, grouped.test) == (plain.train, plain.test)
        assert grouped.groups == {rel: rel for rel in plain.train + plain.test}
    assert source_of("vol/scan.nii.gz#z12") == "vol/scan.nii.gz" and source_of("a/1.png") == "a/1.png"
    parts = sample_groups(tmp_path / "imgs", ["a/0.png#0", "a/0.png#1", "b/0.png"], tmp_path / "imgs", "file")
    assert parts == {"a/0.png#0": "a/0.png", "a/0.png#1": "a/0.png", "b/0.png": "b/0.png"}


def test_the_record_round_trips_and_build_dataset_reads_its_parts(tmp_path):
    root = tmp_path / "imgs"
    rows = ["file,group,comment"]
    for c in ("a", "b"):
        for i in range(6):
            grey(root / c / f"{i}.png", 10 * i)
            rows.append(f"{c}/{i}.png,{c}{i // 2},x")  # three groups of 2 per class
    (tmp_path / "g.csv").write_text("\n".join(rows) + "\n")
    cfg = DataConfig(source="folder", root=str(root), normalize="none", group_by=str(tmp_path / "g.csv"))
    split = draw_for(cfg, *holdout_folder(cfg), 0)
    path = tmp_path / "split.json"
    write_split(split, path)
    assert read_split(path) == split
    raw = json.loads(path.read_text())
    assert raw["group_by"] == str(tmp_path / "g.csv") and raw["group_counts"] == {"train": 4, "test": 2}
    assert raw["groups"]["a/0.png"] == "a0" and len(raw["groups"]) == 12
    assert split.summary().startswith("held out 2 of 6 groups (4 of 12 images; 20% of each class's groups")
    # the same folder as a run's labeled folder: the CSV is relative to it, the same draw
    labeled = DataConfig(source="idx", root=str(tmp_path), labeled_root=str(root), group_by=cfg.group_by)
    assert draw_for(labeled, *holdout_folder(labeled), 0) == split
    cfg.split_file = str(path)
    test = build_dataset(cfg, "test")
    assert [p.relative_to(root).as_posix() for p in test.files] == list(split.test)


# ----------------------------------------------------------------------------- DICOM


def write_dicom(path: Path, value: int, **tags: str) -> Path:
    """A 16 x 16 16-bit MONOCHROME2 DICOM with the given tags (PatientID=..., StudyInstanceUID=...)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    for key, tag_value in tags.items():
        setattr(ds, key, tag_value)
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.full((16, 16), value, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def scans(root: Path, patients: dict[str, str], per: int = 2) -> Path:
    """``root/<class>/<patient>_<i>.dcm``: ``per`` files of each patient (one study each, two series)."""
    for p, c in patients.items():
        for i in range(per):
            write_dicom(root / c / f"{p}_{i}.dcm", 100 * i, PatientID=p, StudyInstanceUID=f"1.2.{p[1:]}",
                        SeriesInstanceUID=f"1.2.{p[1:]}.{i}")  # fmt: skip
    return root


def test_dicom_tags_group_the_files(tmp_path):
    patients = {"P1": "ct", "P2": "ct", "P3": "ct", "P4": "mr", "P5": "mr", "P6": "mr"}
    root = scans(tmp_path / "scans", patients)
    cfg = DataConfig(source="folder", root=str(root), group_by="patient")
    split = draw_for(cfg, *holdout_folder(cfg), 0)
    train, test = sides(split, split.groups)
    assert not train & test and len(test) == 2 and split.groups["ct/P1_1.dcm"] == "P1"
    series = draw_for(DataConfig(source="folder", root=str(root), group_by="series"), *holdout_folder(cfg), 0)
    assert series.groups["ct/P1_1.dcm"] == "1.2.1.1" and len(set(series.groups.values())) == 12


def one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    assert "\n" not in str(err.value)
    for part in parts:
        assert part in str(err.value), (part, str(err.value))


def test_bad_dicom_input_is_one_line(tmp_path):
    root = scans(tmp_path / "scans", {"P1": "ct", "P2": "ct", "P3": "mr", "P4": "mr"})
    write_dicom(root / "mr" / "anon.dcm", 0)  # no PatientID
    cfg = DataConfig(source="folder", root=str(root), group_by="patient")
    with pytest.raises(ValueError) as err:
        draw_for(cfg, *holdout_folder(cfg), 0)
    one_line(err, "mr/anon.dcm", "no DICOM tag PatientID", ".csv")
    (root / "mr" / "anon.dcm").unlink()
    grey(root / "mr" / "photo.png", 0)
    with pytest.raises(ValueError) as err:
        draw_for(cfg, *holdout_folder(cfg), 0)
    one_line(err, "mr/photo.png", "not a readable DICOM file", "PatientID")
    (root / "mr" / "photo.png").unlink()
    (root / "mr" / "P4_0.dcm").unlink()
    (root / "mr" / "P4_1.dcm").unlink()  # class mr: one patient left
    with pytest.raises(ValueError) as err:
        draw_for(cfg, *holdout_folder(cfg), 0)
    one_line(err, "class 'mr'", "all its 2 sample(s) in one of the patients ('P3')", "data.group_by=none")


# ----------------------------------------------------------------------------- leaks and bad group files


def grey(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path)


def test_a_class_only_in_other_classes_groups_can_be_left_on_one_side():
    """b lies in P0 and P1 (minorities) and owns P2 alone; a owns P0, P1, P3, P4 and holds out the first of
    them: b has a held-out image only if that is P0 or P1, else the draw is refused in one line."""
    spec = {"P0": {"a": 3, "b": 1}, "P1": {"a": 3, "b": 1}, "P2": {"b": 2}, "P3": {"a": 2}, "P4": {"a": 2}}
    outcomes = set()
    for seed in range(12):
        held = first(seed, ["P0", "P1", "P3", "P4"])
        if held in ("P0", "P1"):
            split, groups = draw(spec, seed=seed)
            assert sides(split, groups)[1] == {held}
        else:
            with pytest.raises(ValueError) as err:
                draw(spec, seed=seed)
            one_line(err, "class 'b' is left without a held-out sample", "lie in 3 patients")
        outcomes.add(held in ("P0", "P1"))
    assert outcomes == {True, False}


def test_an_explicit_split_that_shares_a_group_is_refused(tmp_path):
    for part, names in {"train": ["a/1.png", "a/2.png", "b/3.png"], "test": ["a/4.png", "b/5.png"]}.items():
        for name in names:
            grey(tmp_path / "imgs" / part / name, 0)
    rows = (
        "file,group\ntrain/a/1.png,p1\ntrain/a/2.png,p2\ntrain/b/3.png,p3\ntest/a/4.png,p4\ntest/b/5.png,p5\n"
    )
    (tmp_path / "g.csv").write_text(rows)
    cfg = DataConfig(source="folder", root=str(tmp_path / "imgs"), group_by=str(tmp_path / "g.csv"))
    check_explicit_split(cfg)  # five groups, apart
    (tmp_path / "g.csv").write_text(rows.replace("p4", "p2").replace("p5", "p3"))
    with pytest.raises(ValueError) as err:
        check_explicit_split(cfg)
    one_line(err, "puts 2 of its 3 groups", "'p2': train/a/2.png (training) and test/a/4.png (held out)")
    # the same folder as a run's labeled_root
    labeled = DataConfig(source="idx", root=str(tmp_path), labeled_root=cfg.root, group_by=cfg.group_by)
    with pytest.raises(ValueError) as err:
        check_explicit_split(labeled)
    one_line(err, "puts 2 of its 3 groups")
    with pytest.raises(ValueError) as err:
        check_explicit_split(DataConfig(source="idx", root=str(tmp_path), group_by="patient"))
    one_line(err, "data.group_by=patient", "data.source='idx' has none")


def test_a_split_file_that_shares_a_group_is_refused(tmp_path):
    root = tmp_path / "imgs"
    rows = ["file,group"]
    for c in ("a", "b"):
        for i in range(4):
            grey(root / c / f"{i}.png", i)
            rows.append(f"{c}/{i}.png,{c}{i // 2}")  # pairs: a0 = a/0.png + a/1.png, ...
    (tmp_path / "g.csv").write_text("\n".join(rows))
    cfg = DataConfig(source="folder", root=str(root), holdout=0.5, group_by=str(tmp_path / "g.csv"))
    found = holdout_folder(cfg)
    path = tmp_path / "split.json"
    # drawn per image, by hand: the odd files held out, so every pair is cut in two
    odd = Split(str(root), 0, 0.5, ("a", "b"), ("a/0.png", "a/2.png", "b/0.png", "b/2.png"),
                ("a/1.png", "a/3.png", "b/1.png", "b/3.png"))  # fmt: skip
    with pytest.raises(ValueError) as err:
        check_recorded_split(odd, cfg, path, *found[:2])
    one_line(
        err, str(path), "puts 4 of its 4 groups", "'a0': a/0.png (training) and a/1.png (held out)", "delete"
    )
    grouped = draw_for(cfg, *found, 0)
    check_recorded_split(grouped, cfg, path, *found[:2])  # drawn by the same groups: nothing to refuse
    # a record whose own groups leak (edited by hand), read without a grouping in the config
    moved = dataclasses.replace(grouped, train=grouped.train[1:], test=grouped.test + grouped.train[:1])
    with pytest.raises(ValueError) as err:
        check_recorded_split(moved, DataConfig(source="folder", root=str(root)), path, *found[:2])
    one_line(err, "puts 1 of its 4 groups")


def test_a_group_file_that_misses_or_names_unknown_files_is_one_line(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        for i in range(5):
            grey(root / c / f"{i}.png", i)
    csv_path = tmp_path / "g.csv"
    cfg = DataConfig(source="folder", root=str(root), group_by=str(csv_path))
    found = holdout_folder(cfg)
    every = [f"{c}/{i}.png" for c in "ab" for i in range(5)]
    cases = [
        (
            "file,group\n" + "".join(f"{r},g{i}\n" for i, r in enumerate(every[4:])),
            [
                "misses 4 of the 10 files",
                "(a/0.png, a/1.png, a/2.png, ... (1 more))",
                "give every file a group",
            ],
        ),
        (
            "file,group\n" + "".join(f"{r},g{i}\n" for i, r in enumerate(every)) + "c/9.png,g9\n",
            ["names 1 file(s) that are not image files", "(c/9.png)"],
        ),
        ("a/0.png,g0\n", ["must begin with a header row naming the columns file and group"]),
        ("file,group\na/0.png,g0\na/0.png,g1\n", ["line 3", "two groups, 'g0' and 'g1'"]),
        ("file,group\na/0.png,\n", ["empty group"]),
    ]
    for text, parts in cases:
        csv_path.write_text(text)
        with pytest.raises(ValueError) as err:
            draw_for(cfg, *found, 0)
        one_line(err, *parts)
    csv_path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        draw_for(cfg, *found, 0)
    one_line(err, "g.csv", "data.group_by")


@pytest.mark.parametrize("value", ["none", None, "patient", "study", "series", "file", "my/groups.CSV"])
def test_good_group_by(value):
    assert DataConfig(group_by=value).group_by == value  # "none" stays: unlike unset, it keeps parts apart


@pytest.mark.parametrize("value", ["patients", "groups.txt", 3, ""])
def test_bad_group_by_is_one_line(value):
    with pytest.raises(ValueError) as err:
        DataConfig(group_by=value)
    one_line(err, "data.group_by must be none, patient, study, series, file or a .csv file", repr(value))


def test_parts_of_a_file_are_drawn_by_file_without_a_grouping(tmp_path, caplog):
    """A multi-frame DICOM's frames and a scene's chips are samples of one file: with no data.group_by,
    the held-out part is drawn by file, so no file has a sample on both sides (else near copies would)."""
    import shutil

    from pydicom.data import get_testdata_file

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):  # rtdose.dcm: 15 frames of 10 x 10
            shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / c / f"dose{i}.dcm")
    cfg = DataConfig(source="folder", root=str(tmp_path), img_size=10, holdout=0.34)
    folder, items, labels, classes = holdout_folder(cfg)
    assert len(items) == 2 * 3 * 15 and {item.frame for item in items} == set(range(15))
    with caplog.at_level("INFO", logger="mimkit"):
        split = draw_for(cfg, folder, items, labels, classes, seed=0)
    assert any("drawn by file" in r.getMessage() for r in caplog.records)
    train = {source_of(i) for i in split.train}
    test = {source_of(i) for i in split.test}
    assert not train & test
    assert len(test) == 2 and len(split.test) == 2 * 15  # round(0.34 * 3) = 1 file of each class
    write_split(split, tmp_path / "s.json")
    built = build_dataset(dataclasses.replace(cfg, split_file=str(tmp_path / "s.json")), "test")
    assert len(built) == 30 and tuple(built[0][0].shape) == (1, 10, 10)
