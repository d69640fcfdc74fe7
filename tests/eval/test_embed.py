"""mimkit embed: one row per readable image, equal to the pooled features, with an index, resumable."""

import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit import eval_protocols
from mimkit.cli import main
from mimkit.data.transforms import EvalTransform
from mimkit.eval import embed as embed_module
from mimkit.eval_protocols import embed
from mimkit.eval_sources import DataChoice, EncoderChoice, FeatureOptions, load_encoder

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="dataset-fashion-mnist is not installed")
FP32 = FeatureOptions(pool="avg", batch_size=16, precision="fp32", device="cpu")


def read_index(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_rows_are_the_encoders_pooled_features_and_the_index_names_them(tiny_mae_run, tmp_path):
    r = embed(EncoderChoice(str(tiny_mae_run)), tmp_path / "e.npy", DataChoice(test_limit=40), FP32, "test")
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (40, r["dim"]) and r["rows"] == 40 and r["skipped"] == 0
    loaded = load_encoder(EncoderChoice(str(tiny_mae_run)))
    import dataclasses

    from mimkit.data import build_dataset

    test = build_dataset(dataclasses.replace(loaded.data, limit=40), "test")
    x = EvalTransform(test.img_size, test.mean, test.std)(test.images)
    with torch.no_grad():
        expected = loaded.encoder.eval().pool(loaded.encoder.forward_features(x), "avg")
    np.testing.assert_allclose(emb, expected.numpy(), rtol=1e-4, atol=1e-5)
    rows = read_index(tmp_path / "e.csv")
    assert [int(r["row"]) for r in rows] == list(range(40))
    assert [int(r["label"]) for r in rows] == test.labels.tolist()
    assert rows[0]["class"] == test.classes[int(test.labels[0])]
    assert not (tmp_path / "e.partial.npy").exists() and not (tmp_path / "e.progress.json").exists()


def folder_with_a_corrupt_file(root):
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    for i in range(5):
        Image.new("L", (28, 28), color=40 * i).save(root / "cats" / f"c{i}.png")
        Image.new("L", (28, 28), color=40 * i + 5).save(root / "dogs" / f"d{i}.png")
    (root / "dogs" / "d2.png").write_bytes(b"not a png")  # decoded on the fly: found during the pass


def test_a_folder_with_an_unreadable_file_is_embedded_without_it(tiny_mae_run, tmp_path):
    folder_with_a_corrupt_file(tmp_path / "imgs")
    data = DataChoice(source="folder", root=str(tmp_path / "imgs"))
    r = embed(EncoderChoice(str(tiny_mae_run)), tmp_path / "f.npy", data, FP32)
    rows = read_index(tmp_path / "f.csv")
    names = [os.path.basename(row["path"]) for row in rows]
    assert "d2.png" not in names and len(names) == np.load(tmp_path / "f.npy").shape[0] == r["rows"]
    assert r["skipped"] == 1 and r["rows"] == 9
    assert {row["class"] for row in rows} == {"cats", "dogs"}


def test_a_killed_pass_resumes_and_ends_equal_to_a_straight_one(tiny_mae_run, tmp_path, monkeypatch):
    choice, data = EncoderChoice(str(tiny_mae_run)), DataChoice(test_limit=64)
    embed(choice, tmp_path / "straight.npy", data, FP32, "test")
    real, calls = EvalTransform.forward, {"n": 0}

    def dies_on_the_third_batch(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(EvalTransform, "forward", dies_on_the_third_batch)
    monkeypatch.setattr(embed_module, "SAVE_EVERY_S", 1e9)  # no timed save: the interruption saves
    with pytest.raises(KeyboardInterrupt):
        embed(choice, tmp_path / "cut.npy", data, FP32, "test")
    assert (tmp_path / "cut.progress.json").is_file()
    monkeypatch.setattr(EvalTransform, "forward", real)
    counted = {"n": 0}

    def counting(self, images):
        counted["n"] += images.shape[0]
        return real(self, images)

    monkeypatch.setattr(EvalTransform, "forward", counting)
    embed(choice, tmp_path / "cut.npy", data, FP32, "test")
    assert counted["n"] == 64 - 32  # two batches of 16 were on disk already
    np.testing.assert_array_equal(np.load(tmp_path / "cut.npy"), np.load(tmp_path / "straight.npy"))


def test_cli_and_bad_output(tiny_mae_run, tmp_path, capsys):
    out = tmp_path / "c.npy"
    argv = ["embed", str(tiny_mae_run), "--out", str(out), "--test-limit", "20", "--split", "test"]
    assert main(argv) == 0
    assert "wrote 20 embeddings" in capsys.readouterr().out and out.is_file()
    assert main(["embed", str(tiny_mae_run), "--out", str(tmp_path / "c.parquet")]) == 2
    assert "must name a .npy file" in capsys.readouterr().err


def test_files_decoded_on_the_fly_skip_the_unreadable_one_during_the_pass(
    tiny_mae_run, tmp_path, monkeypatch
):
    import dataclasses

    real = eval_protocols.build_dataset
    monkeypatch.setattr(
        eval_protocols,
        "build_dataset",
        lambda cfg, split: real(dataclasses.replace(cfg, in_memory=False), split),
    )
    folder_with_a_corrupt_file(tmp_path / "imgs")
    data = DataChoice(source="folder", root=str(tmp_path / "imgs"))
    small = dataclasses.replace(FP32, batch_size=4)  # the corrupt file lands inside a batch
    r = embed(EncoderChoice(str(tiny_mae_run)), tmp_path / "g.npy", data, small)
    rows = read_index(tmp_path / "g.csv")
    assert r["skipped"] == 1 and r["rows"] == 9 == np.load(tmp_path / "g.npy").shape[0]
    assert "d2.png" not in [os.path.basename(row["path"]) for row in rows]
    monkeypatch.undo()  # the same folder decoded up front: the corrupt file is skipped while loading
    reference = embed(EncoderChoice(str(tiny_mae_run)), tmp_path / "h.npy", data, FP32)
    assert reference["rows"] == 9
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), np.load(tmp_path / "h.npy"), rtol=1e-5, atol=1e-6)
