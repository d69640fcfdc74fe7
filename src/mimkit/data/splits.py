"""A held-out part drawn once in a labeled folder that has no ``test/`` or ``val/`` of its own, and recorded.

The rule, per class of ``n`` images: ``round(holdout * n)`` images when ``holdout`` is a fraction, ``holdout``
images when it is a count, then at least 1 and at most ``n - 1``. So every class keeps at least one image on
each side and the held-out part has at least one image per class (scikit-learn's StratifiedShuffleSplit
refuses fewer test samples than classes); a class of one image cannot be split and is a ValueError.

Which images: each file is ranked by the SHA-256 of the seed and its path relative to the folder, and the
lowest ranks are held out. The draw therefore depends on nothing but the seed and the file names (the same
on every machine and library version, no random stream), and one class's draw does not move another's.

The draw is recorded as a file list (:class:`Split`, ``split.json`` in the run directory, which the run's
``data.split_file`` names): :func:`mimkit.data.build_dataset` reads it and never redraws it. Files found in
the folder later are in neither part (counted, left out); files of the record that are gone are counted and
skipped.

Drawn by group (``data.group_by``: patient, study, series, source file, a CSV's groups), the unit is the
group instead of the image: :mod:`mimkit.data.groups` draws it, and the :class:`Split` records the group
of every sample.

Also here: a folder's layout (which sub-folder is train, which is test) and the view of a run's separate
labeled folder (``data.labeled_root``), which the datasets read through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mimkit.data.config import DataConfig
from mimkit.data.images import list_images
from mimkit.data.parts import Item, Part, sample_id, source, source_of

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"  # its name in a run directory
SPLIT_VERSION = 1
PARTS = ("train", "test", "all")


def held_out_count(n: int, holdout: float | int) -> int:
    """How many of a class's ``n >= 2`` images are held out: ``round(holdout * n)`` (halves up) for a
    fraction, ``holdout`` for a count; then clipped to ``[1, n - 1]``."""
    k = math.floor(holdout * n + 0.5) if isinstance(holdout, float) else int(holdout)
    return max(1, min(k, n - 1))


def rank(seed: int, name: str) -> bytes:
    """The draw's order of a sample (or a group) named ``name``: the SHA-256 of the seed and the name."""
    return hashlib.sha256(f"{seed}\0{name}".encode()).digest()


GROUP_NOUNS = {"patient": "patients", "study": "studies", "series": "series", "file": "files"}


def group_noun(group_by: str | None) -> str:
    """``"patients"`` for ``group_by="patient"``, ..., ``"groups"`` for a CSV's groups."""
    return GROUP_NOUNS.get(group_by or "", "groups")


def _class_of(rel: str) -> str:
    return rel.split("/", 1)[0]


@dataclass(frozen=True)
class Split:
    """A labeled folder's two parts, as paths relative to it (POSIX, the class folder first).

    Attributes:
        root: the folder the split was drawn in (absolute, when drawn; for the record).
        seed: the seed of the draw.
        holdout: the rule's value: a fraction in (0, 1) or a count per class.
        classes: the class names, index = label.
        train: the training part, sorted.
        test: the held-out part, sorted.
        group_by: the grouping it was drawn by (``DataConfig.group_by``), ``None`` for images.
        groups: the group of each sample of both parts (drawn by group), else ``None``.
    """

    root: str
    seed: int
    holdout: float | int
    classes: tuple[str, ...]
    train: tuple[str, ...]
    test: tuple[str, ...]
    group_by: str | None = None
    groups: dict[str, str] | None = field(default=None, hash=False)

    def part(self, name: str) -> tuple[str, ...]:
        """``"train"``, ``"test"`` or ``"all"`` (both, sorted)."""
        if name not in PARTS:
            raise ValueError(f"split part must be one of {', '.join(PARTS)}; got {name!r}")
        return tuple(sorted(self.train + self.test)) if name == "all" else getattr(self, name)

    def label(self, rel: str) -> int:
        return self.classes.index(_class_of(rel))

    def counts(self) -> dict[str, dict[str, int]]:
        """``{class: {"train": n, "test": n}}``."""
        out = {name: {"train": 0, "test": 0} for name in self.classes}
        for part in ("train", "test"):
            for rel in getattr(self, part):
                out[_class_of(rel)][part] += 1
        return out

    def group_counts(self) -> dict[str, int]:
        """``{"train": groups, "test": groups}`` (drawn by group)."""
        groups = self.groups or {}
        return {part: len({groups[rel] for rel in getattr(self, part)}) for part in ("train", "test")}

    def summary(self) -> str:
        """``held out 60 of 300 images (20%, stratified over 3 classes, seed 0)``; by group: ``held out 12
        of 60 patients (41 of 200 images; 20% of each class's patients, stratified over 3 classes, ...)``."""
        n, stratified = len(self.train) + len(self.test), f"stratified over {len(self.classes)} classes"
        if self.group_by is None:
            rule = f"{self.holdout:.0%}" if isinstance(self.holdout, float) else f"{self.holdout} per class"
            return f"held out {len(self.test)} of {n} images ({rule}, {stratified}, seed {self.seed})"
        noun, count = group_noun(self.group_by), self.group_counts()
        rule = (
            f"{self.holdout:.0%} of each class's {noun}"
            if isinstance(self.holdout, float)
            else f"{self.holdout} {noun} per class"
        )
        return (
            f"held out {count['test']} of {count['train'] + count['test']} {noun} ({len(self.test)} of {n} "
            f"images; {rule}, {stratified}, seed {self.seed})"
        )

    def to_json(self) -> dict[str, Any]:
        unit, rank_of = (group_noun(self.group_by), "group") if self.group_by else ("images", "path")
        take = f"round({self.holdout} * n)" if isinstance(self.holdout, float) else f"{self.holdout}"
        rule = f"per class of n {unit}: {take}, at least 1 and at most n - 1"
        rule += f", the lowest SHA-256(seed, {rank_of}) ranks"
        record = {
            "version": SPLIT_VERSION,
            "root": self.root,
            "seed": self.seed,
            "holdout": self.holdout,
            "rule": rule,
            "classes": list(self.classes),
            "counts": self.counts(),
            "test": list(self.test),
            "train": list(self.train),
        }
        if self.group_by is None:
            return record
        record["rule"] += (
            "; a group goes with the majority class of its samples (a tie: the class of fewer samples in the "
            "folder, then the first), every sample of a group on its side"
        )
        groups = self.groups or {}
        return record | {
            "group_by": self.group_by,
            "group_counts": self.group_counts(),
            "groups": {rel: groups[rel] for rel in sorted(groups)},
        }


def draw_split(
    folder: str | os.PathLike,
    files: Sequence[Item | str],
    labels: Sequence[int],
    classes: Sequence[str],
    holdout: float | int,
    seed: int,
) -> Split:
    """Draw the held-out part of a labeled folder (see the module docstring for the rule).

    Args:
        folder: the labeled folder (one sub-folder per class).
        files: its samples (files, or parts of files), each under ``folder / classes[label]``.
        labels: the class index of each file.
        classes: the class names.
        holdout: a fraction in (0, 1) or a count per class >= 1.
        seed: the run's seed.

    Raises:
        ValueError: a class with a single image.
    """
    folder = Path(folder)
    members: dict[int, list[str]] = {c: [] for c in range(len(classes))}
    for path, label in zip(files, labels, strict=True):
        members[label].append(sample_id(path if not isinstance(path, str) else Path(path), folder))
    single = [classes[c] for c, found in members.items() if len(found) == 1]
    if single:
        names = ", ".join(repr(name) for name in single)
        which = (
            f"class {names} under {folder} has"
            if len(single) == 1
            else f"classes {names} under {folder} have"
        )
        raise ValueError(
            f"{which} a single image, too few to hold one out and train on one: "
            f"add images to {folder / single[0]}, move it out of the folder, or set data.holdout=null "
            "(no held-out part; evaluation then needs a test/ or val/ folder)"
        )
    train: list[str] = []
    test: list[str] = []
    for found in members.values():
        if not found:
            continue
        k = held_out_count(len(found), holdout)
        ranked = sorted(found, key=lambda rel: rank(seed, rel))
        test += ranked[:k]
        train += ranked[k:]
    root = str(folder.resolve())
    return Split(root, int(seed), holdout, tuple(classes), tuple(sorted(train)), tuple(sorted(test)))


def read_split(path: str | os.PathLike) -> Split:
    """The split recorded in ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a split file of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} not found (data.split_file)")
    try:
        raw = json.loads(path.read_text())
        split = Split(
            str(raw["root"]),
            int(raw["seed"]),
            raw["holdout"],
            tuple(raw["classes"]),
            tuple(raw["train"]),
            tuple(raw["test"]),
            raw.get("group_by"),
            raw.get("groups"),
        )
        version = raw["version"]
        if split.group_by is not None and not all(rel in split.groups for rel in split.train + split.test):
            raise KeyError("groups: the group of every file")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a mimkit split file ({type(err).__name__}: {err})") from None
    if version != SPLIT_VERSION:
        raise ValueError(f"{path} is a split file of version {version!r}; this mimkit reads {SPLIT_VERSION}")
    unknown = sorted({_class_of(rel) for rel in split.train + split.test} - set(split.classes))
    if unknown:
        raise ValueError(f"{path} lists files of classes {unknown} that are not among its classes")
    return split


def write_split(split: Split, path: str | os.PathLike) -> Split:
    """Write ``split`` to ``path`` unless a split file is there already; returns the one on disk.

    The file appears whole (written aside, then linked into place), and an existing one is never replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    aside.write_text(json.dumps(split.to_json(), indent=1) + "\n")
    try:
        os.link(aside, path)
    except FileExistsError:
        return read_split(path)
    finally:
        aside.unlink()
    return split


def select(
    split: Split,
    folder: str | os.PathLike,
    found: Sequence[Item],
    part: str,
    what: str = "split file",
    report: bool = True,
) -> tuple[list[Item], list[int]]:
    """The samples of ``part`` among ``found`` (the folder's samples now, matched by sample id) and their
    labels.

    Files found that are in neither part (added after the draw) and files of the part that are gone are
    counted in one warning line each (``report``); neither is an error unless nothing of the part is left.

    Raises:
        ValueError: none of the part's files is under ``folder``.
    """
    folder = Path(folder)
    present = {sample_id(p, folder): p for p in found}
    wanted = split.part(part)
    kept = [rel for rel in wanted if rel in present]
    listed = set(split.train) | set(split.test)
    new = len(present.keys() - listed)
    if new and report:
        logger.warning(
            "%d image(s) under %s are in neither part of %s (added after it was drawn): left out",
            new, folder, what,
        )  # fmt: skip
    if wanted and not kept:
        raise ValueError(
            f"none of the {len(wanted)} {part} images listed in {what} is under {folder} (it was drawn in "
            f"{split.root}): use that folder, or delete {what} to have the next pretraining draw a new split"
        )
    if len(kept) < len(wanted) and report:
        logger.warning("%d of the %d %s images listed in %s are gone from %s: skipped",
                       len(wanted) - len(kept), len(wanted), part, what, folder)  # fmt: skip
    return [present[rel] for rel in kept], [split.label(rel) for rel in kept]


# ----------------------------------------------------------------------------- folders and their splits


def folder_layout(root: Path) -> tuple[Path, tuple[str, ...], Path | None]:
    """``(train folder, sub-folders of it to leave out, test folder or None)`` of a folder of images."""
    if not root.exists():
        raise FileNotFoundError(f"data root not found: {root} (expected a folder of images)")
    if not root.is_dir():
        raise ValueError(f"data root {root} is a file; expected a folder of images (source='folder')")
    train_dir, exclude = root, ("test", "val")
    if (root / "train").is_dir():
        train_dir, exclude = root / "train", ()
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    return train_dir, exclude, test_dir


def no_test_split(root: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"no test split under {root}: expected a folder {root / 'test'} or {root / 'val'}, or a labeled "
        "folder (class sub-folders) in which `mimkit pretrain` draws a held-out part (data.holdout)"
    )


def labeled_view(cfg: DataConfig) -> DataConfig:
    """The config that reads ``cfg.labeled_root`` as a labeled folder: the evaluation's train and test."""
    return replace(
        cfg,
        source="folder",
        root=cfg.labeled_root,
        labeled=True,
        labeled_root=None,
        holdout_in_pretraining=False,
    )


def drawn_split(cfg: DataConfig, split: str, test_dir: Path | None) -> Split | None:
    """The parts ``cfg.split_file`` records, when they apply to the folder ``cfg.root`` read for ``split``:
    a labeled folder without test/ or val/ (and not ``root`` for pretraining beside a ``labeled_root``)."""
    if test_dir is not None or not cfg.split_file or cfg.labeled is False:
        return None
    if split == "pretrain" and cfg.labeled_root:  # the split file is the labeled folder's
        return None
    return read_split(cfg.split_file)


def split_part(
    cfg: DataConfig, drawn: Split, folder: Path, split: str, found: Sequence[Item], report: bool = True
) -> tuple[list[Item], list[int]]:
    """The files of ``split`` among ``found`` (the image files under ``folder``) and their labels: the
    held-out part for "test", the training part for "train" and "pretrain" (both parts for "pretrain" with
    ``cfg.holdout_in_pretraining``)."""
    part = "test" if split == "test" else "train"
    if split == "pretrain" and cfg.holdout_in_pretraining:
        part = "all"
    return select(drawn, folder, found, part, cfg.split_file, report)


def without_labeled_test(
    cfg: DataConfig, root: Path, files: list[Item], labels: list[int]
) -> tuple[list[Item], list[int]]:
    """Pretraining's ``files`` under ``root`` without the test images of ``cfg.labeled_root`` among them
    (nothing to do when the two folders are apart, the usual case). A test file held out whole holds out
    all its parts; a held-out part (a split file's ``file#z=41``) holds out that part."""
    if not cfg.labeled_root or cfg.holdout_in_pretraining:
        return files, labels
    labeled, top = Path(cfg.labeled_root).expanduser().resolve(), root.resolve()
    if not (labeled.is_relative_to(top) or top.is_relative_to(labeled)):
        return files, labels
    train_dir, _, test_dir = folder_layout(labeled)
    if test_dir is not None:
        held = [(p, "") for p in list_images(test_dir)]
    elif cfg.split_file:
        test = read_split(cfg.split_file).test
        held = [(train_dir / source_of(rel), rel[len(source_of(rel)) + 1 :]) for rel in test]
    else:
        return files, labels
    held_out = {(os.path.realpath(p), part) for p, part in held}

    def key(item: Item) -> tuple[str, str]:
        return os.path.realpath(source(item)), item.suffix if isinstance(item, Part) else ""

    whole = {path for path, part in held_out if not part}
    keep = [i for i, p in enumerate(files) if key(p) not in held_out and key(p)[0] not in whole]
    if len(keep) < len(files):
        logger.info(
            "left out the %d test image(s) of %s found under %s", len(files) - len(keep), labeled, root
        )
    return [files[i] for i in keep], [labels[i] for i in keep]
