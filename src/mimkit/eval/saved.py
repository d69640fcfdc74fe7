"""A fine-tuned classifier kept with what it needs: ``classifier.json`` next to the run's checkpoint.

:func:`~mimkit.eval.finetune.finetune` writes it; ``mimkit predict`` and ``mimkit export`` read it to
rebuild the classifier and to prepare new images the way its training images were prepared (as
transformers and timm keep class names and preprocessing inside a model's config). Its entries:

- ``classes``: the class names, index = output;
- ``img_size`` ``[H, W]`` and ``channels``: the classifier's input; ``mean`` / ``std``: the per-channel
  normalisation in unit scale (uint8 / 255, uint16 / 65535, float as is);
- how files were decoded: ``stored_size`` (the size files are decoded to, resized to ``img_size`` after
  when it differs), ``resize_mode``, ``dtype`` (``uint8``, ``uint16`` or ``float32``), ``bands``,
  ``window`` (DICOM, NIfTI) and ``clip`` (per-channel ``[lows, highs]`` in stored units, or null); ``volume``
  and ``tile``: how files were cut into slices and chips (:mod:`mimkit.data.parts`);
- ``encoder``: the arguments of :func:`mimkit.create_encoder` that build the network with its head;
- ``scores``: the fine-tuning result (held-out top-1 and its image count, steps, final training loss, the
  loss at chance) and ``trained_on``: the training images' folder and count.

The weights stay in the run's checkpoint: ``best.pt`` when the run keeps one, else ``last.pt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mimkit.data.transforms import EvalTransform
from mimkit.engine import checkpoint as ckpt
from mimkit.eval.classifier import Classifier
from mimkit.models import create_encoder
from mimkit.plain import plain

CLASSIFIER_FILE = "classifier.json"
FORMAT = "mimkit-classifier/1"
CHECKPOINTS = ("best.pt", ckpt.LAST)  # the first one present holds the classifier's weights
_DTYPES = {torch.uint8: "uint8", torch.uint16: "uint16", torch.float32: "float32"}


def classifier_record(classifier: Classifier, train_set, result: dict[str, Any]) -> dict[str, Any]:
    """The contents of ``classifier.json`` (see the module docstring) for a classifier fine-tuned on
    ``train_set`` (an :class:`~mimkit.data.ImageDataset`) that scored ``result``."""
    encoder = classifier.encoder
    built = getattr(encoder, "mimkit_config", None)  # how create_encoder built it (None: not by it)
    decode = train_set.decode
    return plain(
        {
            "format": FORMAT,
            "classes": list(train_set.classes),
            "img_size": list(encoder.img_size),
            "channels": train_set.channels,
            "mean": list(train_set.mean),
            "std": list(train_set.std),
            "stored_size": list(train_set.img_size),
            "resize_mode": train_set.resize_mode,
            "dtype": _DTYPES[train_set.dtype],
            "bands": list(decode.bands) if decode.bands else None,
            "window": decode.window,
            "clip": [list(train_set.clip[0]), list(train_set.clip[1])] if train_set.clip else None,
            "volume": asdict(decode.items.volume) if decode.items else None,
            "tile": asdict(decode.items.tile) if decode.items and decode.items.tile else None,
            "encoder": built["encoder"] if built else None,
            "scores": result,
            "trained_on": {"root": str(train_set.root), "images": len(train_set)},
        }
    )


def write_classifier_record(
    run_dir: str | os.PathLike, classifier: Classifier, train_set, result: dict[str, Any]
) -> Path:
    """Write :func:`classifier_record` to ``run_dir/classifier.json`` (atomically); returns its path."""
    path = Path(run_dir, CLASSIFIER_FILE)
    tmp = path.with_name(CLASSIFIER_FILE + ".tmp")
    tmp.write_text(json.dumps(classifier_record(classifier, train_set, result), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def find_classifier_run(path: str | os.PathLike) -> Path:
    """The fine-tuning run directory ``path`` names: itself (or the directory of a checkpoint in it) when
    it holds ``classifier.json``, else a pretraining run's default fine-tuning run ``path/eval/finetune``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: in one line, no fine-tuning run there (and what would be).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run directory or checkpoint: {path}")
    run = path.parent if path.is_file() else path
    for candidate in (run, run / "eval" / "finetune"):
        if (candidate / CLASSIFIER_FILE).is_file():
            return candidate
        if (candidate / "finetune.json").is_file():
            raise ValueError(
                f"{candidate} was fine-tuned before mimkit saved classifiers (it has no {CLASSIFIER_FILE}): "
                f"fine-tune again (mimkit eval finetune ... --out NEW_DIR)"
            )
    if (run / "config.yaml").is_file():
        raise ValueError(
            f"{run} is a pretraining run without a fine-tuning run: run `mimkit eval finetune {run}` "
            f"first (it writes {run / 'eval' / 'finetune' / CLASSIFIER_FILE})"
        )
    raise ValueError(
        f"{path} is not a fine-tuning run (no {CLASSIFIER_FILE}): give the directory `mimkit eval finetune` "
        "wrote (by default <run>/eval/finetune), or its pretraining run"
    )


def is_classifier_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a fine-tuning run directory with ``classifier.json`` (or a checkpoint in one)."""
    path = Path(path)
    return (path.parent if path.is_file() else path).joinpath(CLASSIFIER_FILE).is_file()


@dataclass
class SavedClassifier:
    """A fine-tuned classifier loaded from its run.

    Attributes:
        classifier: the :class:`~mimkit.eval.classifier.Classifier`, in eval mode, on the CPU.
        record: the contents of ``classifier.json``.
        run_dir: the fine-tuning run directory.
        checkpoint: the file its weights came from.
        config: the run's config stored in that checkpoint (recipe, encoder and where it started from).
    """

    classifier: Classifier
    record: dict[str, Any]
    run_dir: Path
    checkpoint: Path
    config: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    def transform(self) -> EvalTransform:
        """Stored images -> the classifier's input: resized to ``img_size`` if need be, normalised."""
        return EvalTransform(self.record["img_size"], self.record["mean"], self.record["std"])


def load_classifier(path: str | os.PathLike) -> SavedClassifier:
    """The classifier of a fine-tuning run (or of a pretraining run's default one, see
    :func:`find_classifier_run`), rebuilt from ``classifier.json`` with the weights of ``best.pt`` if the
    run keeps one, else ``last.pt`` (a checkpoint file given as ``path`` is taken as it is).

    Raises:
        FileNotFoundError, ValueError: no fine-tuning run there, no checkpoint in it, or a record that does
            not build the classifier its checkpoint holds.
    """
    run = find_classifier_run(path)
    record = json.loads((run / CLASSIFIER_FILE).read_text())
    given = Path(path)
    found = [run / name for name in CHECKPOINTS if (run / name).is_file()]
    checkpoint = given if given.is_file() else (found[0] if found else None)
    if checkpoint is None:
        raise FileNotFoundError(f"{run} has {CLASSIFIER_FILE} but no checkpoint ({' or '.join(CHECKPOINTS)})")
    if not record.get("encoder"):
        raise ValueError(f"{run / CLASSIFIER_FILE} does not say how to build the network (no 'encoder')")
    options = dict(record["encoder"])
    encoder = create_encoder(options.pop("name"), **options)
    classifier = Classifier(encoder)
    saved = ckpt.load_checkpoint(checkpoint)
    state, state_config = saved.get("model", saved), saved.get("config") or {}
    try:
        classifier.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(
            f"{checkpoint} does not fit the classifier {run / CLASSIFIER_FILE} describes: {first}"
        ) from None
    if classifier.num_classes != len(record["classes"]):
        raise ValueError(
            f"{run / CLASSIFIER_FILE} names {len(record['classes'])} classes; the head has "
            f"{classifier.num_classes}"
        )
    return SavedClassifier(classifier.eval(), record, run, checkpoint, state_config)
