"""Held-out parts drawn by group, so that no patient, study, series or scene lies on both sides of a split.

Slices of one patient or chips of one scene on both sides of a split inflate every score: the held-out
samples are then near copies of training ones. ``data.group_by`` names the unit of the split:

- ``"patient"``, ``"study"``, ``"series"``: the DICOM tag PatientID, StudyInstanceUID or
  SeriesInstanceUID of each file, read from its header only;
- ``"file"``: the source file of a sample (a sample id ``rel/path.ext#part`` is a part of the file
  ``rel/path.ext``: a slice of a volume, a chip of a scene; a plain id is its own file);
- a ``.csv`` file with the columns ``file`` and ``group`` (more columns are ignored): every source file,
  relative to the folder the config names (``data.root``, or ``data.labeled_root``), and its group.

The rule, per class: each group goes with the majority class of its samples (a tie: the class with fewer
samples in the folder, then the first name), and of a class's ``n >= 2`` groups
:func:`~mimkit.data.splits.held_out_count` ones are held out, those of the lowest SHA-256(seed, group
name). ``data.holdout`` thus counts groups, not images: the group is the unit drawn, and an image count
could only be met approximately with whole groups of unequal sizes. Every sample of a held-out group is
held out, whatever its class. A class must have samples in two groups at least and end with a sample on
each side (a class whose groups all go with other classes follows them); otherwise a one-line ValueError.

An explicit split (``test/`` or ``val/`` folders, a split file) is checked instead of drawn: a group on
both sides is refused in one line (:func:`check_explicit_split`, :func:`check_recorded_split`).
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from mimkit.data.config import DataConfig
from mimkit.data.images import list_images
from mimkit.data.parts import Part, sample_id, source, source_of
from mimkit.data.readers import ReadError
from mimkit.data.series import slice_header
from mimkit.data.splits import (
    Split,
    draw_split,
    folder_layout,
    group_noun,
    held_out_count,
    labeled_view,
    rank,
)

logger = logging.getLogger(__name__)

DICOM_TAGS = {"patient": "PatientID", "study": "StudyInstanceUID", "series": "SeriesInstanceUID"}
_SHOWN = 3  # files named in a message


def _few(names: Sequence[str]) -> str:
    more = f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _key(path: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(path))


def read_group_csv(path: str | os.PathLike, base: Path) -> dict[str, str]:
    """``{absolute source path: group}`` from a CSV with the columns ``file`` (relative to ``base``, or
    absolute) and ``group``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``file`` / ``group`` columns, an empty group, a file given two groups.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"group file {str(path)!r} not found (data.group_by)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.DictReader(f)
        if not {"file", "group"} <= set(rows.fieldnames or ()):
            raise ValueError(
                f"{path} (data.group_by) must begin with a header row naming the columns file and group; "
                f"got {rows.fieldnames}"
            )
        groups: dict[str, str] = {}
        for row in rows:
            name, group = (row["file"] or "").strip(), (row["group"] or "").strip()
            if not name:
                continue
            if not group:
                raise ValueError(f"{path} line {rows.line_num}: file {name!r} has an empty group")
            key = _key(base / name)
            if groups.setdefault(key, group) != group:
                raise ValueError(
                    f"{path} line {rows.line_num}: file {name!r} is given two groups, "
                    f"{groups[key]!r} and {group!r}"
                )
    return groups


def _dicom_groups(base: Path, sources: Sequence[Path], group_by: str) -> dict[str, str]:
    try:
        import pydicom
    except ImportError:
        raise ValueError(
            f"data.group_by={group_by} reads DICOM headers, which needs pydicom (pip install 'mimkit[field]')"
        ) from None
    tag, out = DICOM_TAGS[group_by], {}
    for path in sources:
        name = path.relative_to(base).as_posix()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[tag]).get(tag)
        except Exception as err:  # noqa: BLE001 - InvalidDicomError and whatever a broken header raises
            raise ValueError(
                f"data.group_by={group_by} reads the DICOM tag {tag}, but {name} under {base} is not a "
                f"readable DICOM file ({type(err).__name__}): group other files with a .csv file"
            ) from None
        value = str(value).strip() if value is not None else ""
        if not value:
            raise ValueError(
                f"{name} under {base} has no DICOM tag {tag} (data.group_by={group_by}): group by another "
                "tag, or name each file's group in a .csv file"
            )
        out[_key(path)] = value
    return out


def source_groups(base: Path, sources: Sequence[Path], group_by: str) -> dict[str, str]:
    """``{absolute path: group}`` of each source file under ``base``, by ``group_by`` (see the module).

    Raises:
        ValueError: a CSV that misses files or names unknown ones, a file without the DICOM tag.
    """
    base = Path(base).expanduser()
    if group_by == "file":
        return {_key(p): Path(p).relative_to(base).as_posix() for p in sources}
    if group_by in DICOM_TAGS:
        return _dicom_groups(base, sources, group_by)
    named = read_group_csv(group_by, base)
    wanted = {_key(p): p for p in sources}
    missing = [Path(p).relative_to(base).as_posix() for k, p in wanted.items() if k not in named]
    if missing:
        raise ValueError(
            f"{group_by} (data.group_by) misses {len(missing)} of the {len(wanted)} files under {base} "
            f"({_few(sorted(missing))}): give every file a group"
        )
    unknown = sorted(os.path.relpath(k, base) for k in named if k not in wanted)
    if unknown:
        raise ValueError(
            f"{group_by} (data.group_by) names {len(unknown)} file(s) that are not image files under {base} "
            f"({_few(unknown)}): give paths relative to {base}, or remove the rows"
        )
    return {k: named[k] for k in wanted}


def sample_groups(folder: Path, ids: Sequence[str], base: Path, group_by: str) -> dict[str, str]:
    """``{sample id: group}`` for sample ids relative to ``folder`` (a folder inside ``base``, or itself)."""
    sources = sorted({source_of(i) for i in ids})
    by_source = source_groups(base, [folder / s for s in sources], group_by)
    return {i: by_source[_key(folder / source_of(i))] for i in ids}


def split_by_groups(
    folder: str | os.PathLike,
    ids: Sequence[str],
    labels: Sequence[int],
    classes: Sequence[str],
    groups: Mapping[str, str],
    holdout: float | int,
    seed: int,
    group_by: str,
) -> Split:
    """The held-out part of labeled samples ``ids`` with their ``groups`` (the rule: the module docstring).

    Raises:
        ValueError: a class in one group only, or left without a sample on one side.
    """
    noun = group_noun(group_by)
    where = f"data.group_by={group_by}: class"
    in_class: dict[int, Counter[str]] = defaultdict(Counter)  # class -> its samples per group
    of_group: dict[str, Counter[int]] = defaultdict(Counter)  # group -> its samples per class
    for rel, label in zip(ids, labels, strict=True):
        in_class[label][groups[rel]] += 1
        of_group[groups[rel]][label] += 1
    for c, found in sorted(in_class.items()):
        if len(found) == 1:
            group, n = next(iter(found.items()))
            raise ValueError(
                f"{where} {classes[c]!r} has all its {n} sample(s) in one of the {noun} ({group!r}), too few "
                f"to hold one out and train on one: add {noun} to it, move it out, or set data.group_by=none"
            )
    size = {c: sum(found.values()) for c, found in in_class.items()}
    owner = {g: max(n, key=lambda c: (n[c], -size[c], -c)) for g, n in of_group.items()}
    held: set[str] = set()
    for c in range(len(classes)):
        own = sorted((g for g, o in owner.items() if o == c), key=lambda g: rank(seed, g))
        if len(own) >= 2:  # one group of its own stays in training; 0 or 1: its samples follow other groups
            held.update(own[: held_out_count(len(own), holdout)])
    test = sorted(rel for rel in ids if groups[rel] in held)
    train = sorted(rel for rel in ids if groups[rel] not in held)
    for c, found in sorted(in_class.items()):
        sides = {"held-out": set(found) & held, "training": set(found) - held}
        empty = [side for side, gs in sides.items() if not gs]
        if empty:
            raise ValueError(
                f"{where} {classes[c]!r} is left without a {empty[0]} sample: its {size[c]} sample(s) lie in "
                f"{len(found)} {noun}, which go with other classes (a group goes with its majority class): "
                f"change data.holdout or train.seed, or set data.group_by=none"
            )
    root = str(Path(folder).resolve())
    picked = {rel: groups[rel] for rel in ids}
    return Split(root, int(seed), holdout, tuple(classes), tuple(train), tuple(test), group_by, picked)


def series_or_file(folder: Path, ids: Sequence[str]) -> dict[str, str]:
    """``{sample id: group}``: the SeriesInstanceUID of each sample's file, or the file itself when it has
    none or is no readable DICOM (the grouping ``data.volume.series`` implies: unlike an explicit
    ``data.group_by=series``, a file it cannot group stays a group of its own, to be skipped when read)."""
    by_source: dict[str, str] = {}
    for src in dict.fromkeys(map(source_of, ids)):
        try:
            by_source[src] = slice_header(folder / src).series or src
        except ReadError:
            by_source[src] = src
    return {i: by_source[source_of(i)] for i in ids}


def draw_for(
    cfg: DataConfig,
    folder: Path,
    files: Sequence[Path],
    labels: Sequence[int],
    classes: Sequence[str],
    seed: int,
) -> Split:
    """The held-out part of the labeled folder ``folder`` (as ``holdout_folder`` finds it)
    drawn with ``cfg.holdout`` and ``seed``: by ``cfg.group_by``; without it per image, except that the
    parts of a file (a volume's slices, a DICOM's frames, a scene's chips) are drawn by file
    (``group_by="file"``, said in one line), and the slices of DICOM series (``data.volume.series``) by
    series (``group_by="series"``): otherwise near copies would lie on both sides."""
    group_by = grouping(cfg)
    if cfg.group_by is None and any(
        isinstance(item, Part) and item.series_index is not None for item in files
    ):
        logger.info(
            "the samples are slices of DICOM series: the held-out part is drawn by series "
            "(data.group_by=series), so no series has slices on both sides"
        )
        ids = [sample_id(item, folder) for item in files]
        groups = series_or_file(folder, ids)
        return split_by_groups(folder, ids, labels, classes, groups, cfg.holdout, seed, "series")
    if cfg.group_by is None and any(isinstance(item, Part) for item in files):
        logger.info(
            "the samples are slices, frames or chips of files: the held-out part is drawn by file "
            "(data.group_by=file), so no file has parts on both sides"
        )
        group_by = "file"
    if group_by is None:
        return draw_split(folder, files, labels, classes, cfg.holdout, seed)
    ids = [sample_id(item, folder) for item in files]
    groups = sample_groups(folder, ids, _base(cfg), group_by)
    return split_by_groups(folder, ids, labels, classes, groups, cfg.holdout, seed, group_by)


def _one(group_by: str) -> str:
    return group_by if group_by in DICOM_TAGS or group_by == "file" else "group"


def _base(cfg: DataConfig) -> Path:
    """The folder the config names, that a group CSV's paths are relative to."""
    return Path(cfg.labeled_root or cfg.root).expanduser()


def leak_error(
    train: Mapping[str, str], test: Mapping[str, str], group_by: str, what: str, fix: str
) -> ValueError | None:
    """A one-line ValueError when a group has samples in both ``train`` and ``test`` (``{id: group}``)."""
    shared = sorted(set(train.values()) & set(test.values()))
    if not shared:
        return None
    noun, g = group_noun(group_by), shared[0]
    a, b = (next(rel for rel, group in part.items() if group == g) for part in (train, test))
    total = len(set(train.values()) | set(test.values()))
    return ValueError(
        f"{what} puts {len(shared)} of its {total} {noun} (data.group_by={group_by}) on both sides, e.g. "
        f"{g!r}: {a} (training) and {b} (held out), so the scores would be on {noun} trained on: {fix}"
    )


def grouping(cfg: DataConfig) -> str | None:
    """The grouping ``cfg`` asks for: None when ``data.group_by`` is unset or ``"none"``."""
    return None if cfg.group_by in (None, "none") else cfg.group_by


def check_source(cfg: DataConfig) -> None:
    """A one-line ValueError when ``cfg.group_by`` is set for a source without files to group."""
    if grouping(cfg) is not None and cfg.source != "folder" and not cfg.labeled_root:
        raise ValueError(
            f"data.group_by={cfg.group_by} groups the files of a folder, and data.source={cfg.source!r} "
            "has none: use a folder (data.source=folder, or data.labeled_root for the labeled images), or "
            "data.group_by=none"
        )


def check_explicit_split(cfg: DataConfig) -> None:
    """A one-line ValueError when the labeled folder's own ``test/`` or ``val/`` shares a group with its
    training images (the folder: ``cfg.labeled_root``, else a folder ``cfg.root``)."""
    check_source(cfg)
    if grouping(cfg) is None:
        return
    view = labeled_view(cfg) if cfg.labeled_root else cfg
    if view.source != "folder":
        return
    base = _base(cfg)
    train_dir, exclude, test_dir = folder_layout(base)
    if test_dir is None:
        return
    train, test = list_images(train_dir, exclude), list_images(test_dir)
    groups = source_groups(base, train + test, cfg.group_by)
    err = leak_error(
        {p.relative_to(base).as_posix(): groups[_key(p)] for p in train},
        {p.relative_to(base).as_posix(): groups[_key(p)] for p in test},
        cfg.group_by,
        f"the split of {base} into training images and {test_dir.name}/",
        f"move the files of each shared {_one(cfg.group_by)} to one side, or merge {test_dir.name}/ into the "
        "rest to have pretraining draw a split by group",
    )
    if err is not None:
        raise err


def check_recorded_split(
    split: Split, cfg: DataConfig, path: Path, folder: Path, files: Sequence[Path]
) -> None:
    """A one-line ValueError when the split file ``path`` puts a group on both sides: by the groups it
    records, and by ``cfg.group_by`` when it was drawn otherwise (read from ``files``, the images of the
    labeled folder ``folder`` now; samples whose file is gone are not checked)."""
    fix = f"delete {path} (or give another data.split_file) to have pretraining draw a split by group"
    checks = [(split.group_by, split.groups or {})]
    if grouping(cfg) is not None and cfg.group_by != split.group_by:
        by_source = source_groups(_base(cfg), list(dict.fromkeys(map(source, files))), cfg.group_by)
        ids = split.train + split.test
        now = {rel: by_source.get(_key(folder / source_of(rel))) for rel in ids}
        checks.append((cfg.group_by, {rel: g for rel, g in now.items() if g is not None}))
    for group_by, groups in checks:
        if not groups:
            continue
        train = {rel: groups[rel] for rel in split.train if rel in groups}
        test = {rel: groups[rel] for rel in split.test if rel in groups}
        err = leak_error(train, test, str(group_by), str(path), fix)
        if err is not None:
            raise err
