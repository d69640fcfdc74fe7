"""Tar shards: packing (WebDataset layout, skip-and-count), streaming (split across processes and workers,
epoch-seeded, every image once per epoch), exact mid-epoch resume, a broken shard, the CLI end to end."""

import json
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.cli import main
from mimkit.data.config import DataConfig
from mimkit.data.images import decode_image
from mimkit.data.packing import pack_shards
from mimkit.data.shards import INDEX, ShardLoader, ShardSet


def folder(root: Path, per_class: int = 24, size=(20, 24)) -> Path:
    """``root/{a,b}/i.png``: class a dark, class b bright; one corrupt file."""
    rng = np.random.default_rng(0)
    for name, level in (("a", 40), ("b", 200)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 10, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture
def packed(tmp_path):
    src = folder(tmp_path / "src")
    index = pack_shards(src, tmp_path / "shards", shard_size=10, seed=3)
    return src, tmp_path / "shards", index


def test_packing_writes_webdataset_shards_and_counts_the_unreadable(packed):
    src, out, index = packed
    assert index["images"] == 48 and index["skipped"] == [str(src / "a" / "broken.png")]
    assert [s["count"] for s in index["shards"]] == [10, 10, 10, 10, 8]
    assert index["classes"] == ["a", "b"] and index["image"] == {
        "height": 20, "width": 24, "channels": 3, "dtype": "uint8"
    }  # fmt: skip
    assert json.loads((out / INDEX).read_text()) == index
    originals = {p.read_bytes(): p.parent.name for p in src.rglob("*.png") if p.name != "broken.png"}
    seen = []
    for shard in index["shards"]:
        with tarfile.open(out / shard["file"]) as tar:
            names = tar.getnames()
            keys = sorted({n.split(".")[0] for n in names})
            assert names == [f"{k}.{ext}" for k in keys for ext in ("png", "cls")]  # image, then its class
            for key in keys:
                data = tar.extractfile(f"{key}.png").read()
                label = int(tar.extractfile(f"{key}.cls").read())
                assert ["a", "b"][label] == originals[data]  # the file's own bytes, its own class
                seen.append(data)
    assert sorted(seen) == sorted(originals)  # every readable file once
    with pytest.raises(ValueError, match="exists and is not an empty directory; choose another or pass"):
        pack_shards(src, out)


def _epoch(loader: ShardLoader, epoch: int, start: int = 0) -> list[torch.Tensor]:
    loader.set_epoch(epoch)
    loader.set_start_batch(start)
    return [loader.last_indices.clone() for _ in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_two_processes_stream_disjoint_images_and_resume_exactly(packed, workers):
    _, out, _ = packed
    data = ShardSet(DataConfig(source="shards", root=str(out)))
    loaders = [
        ShardLoader(data, 4, seed=1, rank=r, world_size=2, num_workers=workers, buffer=6) for r in (0, 1)
    ]
    assert [len(lo) for lo in loaders] == [48 // 2 // 4] * 2
    epochs = [[torch.cat(_epoch(lo, e)) for lo in loaders] for e in (0, 1)]
    for mine, theirs in epochs:
        assert not set(mine.tolist()) & set(theirs.tolist())  # each process reads its own shards
        if workers == 0:  # one stream over >= 2 shards: no image twice (a worker with one short shard
            assert len(set(mine.tolist())) == len(mine)  # of 8 or 10 images reads it again for its 12)
    assert not torch.equal(epochs[0][0], epochs[1][0])  # another epoch, another order
    assert torch.equal(torch.cat(_epoch(loaders[0], 0)), epochs[0][0])  # the same epoch, the same order
    full = _epoch(loaders[0], 1)
    for start in (1, 2, 5):  # a mid-epoch resume sees exactly the batches not yet seen, in order
        rest = _epoch(loaders[0], 1, start)
        assert len(rest) == len(full) - start and all(map(torch.equal, rest, full[start:]))


def test_streamed_images_are_the_decoded_files_with_their_labels(packed):
    src, out, index = packed
    data = ShardSet(DataConfig(source="shards", root=str(out), img_size=16, channels=1))
    files = {}
    for shard in index["shards"]:
        with tarfile.open(out / shard["file"]) as tar:
            for name in tar.getnames():
                if name.endswith(".png"):
                    files[int(name.split(".")[0])] = tar.extractfile(name).read()
    by_bytes = {p.read_bytes(): p for p in src.rglob("*.png")}
    loader = ShardLoader(data, 8, buffer=4)
    for images, labels in loader:
        assert images.shape == (8, 1, 16, 16) and images.dtype == torch.uint8
        for image, label, index in zip(images, labels, loader.last_indices, strict=True):
            path = by_bytes[files[int(index)]]
            assert torch.equal(image, decode_image(path, 1, (16, 16)))
            assert int(label) == ["a", "b"].index(path.parent.name)


def test_a_broken_shard_is_skipped_and_the_epoch_keeps_its_length(packed, caplog):
    _, out, index = packed
    broken = out / index["shards"][1]["file"]
    broken.write_bytes(broken.read_bytes()[:9000])  # cut off a few images in
    data = ShardSet(DataConfig(source="shards", root=str(out)))
    loader = ShardLoader(data, 4, buffer=4)
    with caplog.at_level(logging.WARNING, logger="mimkit.data.shards"):
        batches = _epoch(loader, 0)
    assert len(batches) == len(loader) == 12  # short by 9 images: the worker reads its list again
    assert re.search(f"shard {broken} unreadable after [1-8] images .*: the rest of it skipped", caplog.text)


def test_bad_shard_setups_are_one_line(packed, tmp_path):
    _, out, _ = packed
    with pytest.raises(FileNotFoundError, match="has no shards.json: make shards with `mimkit shards make"):
        ShardSet(DataConfig(source="shards", root=str(tmp_path)))
    data = ShardSet(DataConfig(source="shards", root=str(out)))
    with pytest.raises(ValueError, match="5 shard\\(s\\) for 2 process\\(es\\) x 3 loader worker\\(s\\)"):
        ShardLoader(data, 4, world_size=2, num_workers=3)
    (out / INDEX).write_text("{}")
    with pytest.raises(ValueError, match="is not a mimkit shard index"):
        ShardSet(DataConfig(source="shards", root=str(out)))


def test_cli_packs_pretrains_resumes_and_evaluates_on_a_folder(tmp_path, capsys):
    src = folder(tmp_path / "src")
    assert main(["shards", "make", str(src), str(tmp_path / "shards"), "--shard-size", "12"]) == 0
    assert "wrote 4 shard(s) of 48 images, 1 unreadable skipped" in capsys.readouterr().out
    run = tmp_path / "run"
    argv = [
        "pretrain", "--config", "configs/mae_fashion_mnist.yaml", "data.source=shards",
        f"data.root={tmp_path / 'shards'}", "data.num_workers=1", "encoder.embed_dim=32", "encoder.depth=1",
        "encoder.num_heads=2", "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2",
        "train.batch_size=8", "train.epochs=2", "train.warmup_epochs=0", "train.precision=fp32",
        "train.progress=false", "train.tensorboard=false", "train.log_every=1", f"output_dir={run}",
    ]  # fmt: skip
    assert main([*argv, "train.max_steps=4"]) == 0  # stops mid-epoch 0 (6 batches per epoch)
    assert main(argv) == 0  # resumes at batch 4 of epoch 0
    straight = str(tmp_path / "straight")
    assert main([*argv[:-1], f"output_dir={straight}"]) == 0

    def losses(path):
        rows = [json.loads(line) for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    assert [s for s, _ in losses(run)] == list(range(1, 13))
    assert losses(run) == losses(straight)  # the resumed stream is the uninterrupted one
    with pytest.raises(SystemExit):  # argparse: --labeled takes auto / true / false
        main(["shards", "make", str(src), str(tmp_path / "x"), "--labeled", "maybe"])
    capsys.readouterr()
    assert main(["knn", str(run), "--k", "3", "--device", "cpu"]) == 2  # no evaluation split in shards
    assert "give a folder of images with --data-root" in capsys.readouterr().err
    folder(tmp_path / "eval" / "train", per_class=8)
    folder(tmp_path / "eval" / "test", per_class=4)
    assert main(["knn", str(run), "--k", "3", "--device", "cpu", "--data-root", str(tmp_path / "eval")]) == 0
    assert "k=3" in capsys.readouterr().out


def test_a_limit_cuts_the_stream_too(packed):
    _, out, _ = packed
    data = ShardSet(DataConfig(source="shards", root=str(out), limit=25))
    assert len(data) == 25 and [s.count for s in data.shards] == [10, 10, 5]
    loader = ShardLoader(data, 5, buffer=4)
    seen = torch.cat(_epoch(loader, 0))
    assert sorted(seen.tolist()) == list(range(25))  # the first 25 images in packing order, once each
