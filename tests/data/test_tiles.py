"""Large images as chips (data.tile): exact chip contents against numpy slicing of the whole array, chip
counts by the formula floor((H - size) / stride) + 1 per axis, nodata chips left out, sample ids, the
same chips in memory, decoded on the fly and packed into shards."""

import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.cli import main
from mimkit.data import DataConfig, build_dataset
from mimkit.data.items import expand, item_spec
from mimkit.data.parts import Part, sample_id, source_of, tile_spec
from mimkit.data.shards import ShardSet
from mimkit.data.splits import draw_split
from mimkit.data.tiles import read_region

tifffile = pytest.importorskip("tifffile")
H, W = 300, 500


def scene(seed: int = 0, bands: int = 3) -> np.ndarray:
    """uint16 ``[300, 500, bands]`` with no zero, but a zero block over the top-left 64 x 128 pixels."""
    arr = np.random.default_rng(seed).integers(1, 65535, (H, W, bands)).astype(np.uint16)
    arr[:64, :128] = 0
    return arr


def write_tiff(path, arr, layout="tiled", **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "tiled": dict(tile=(64, 64)),
        "strips": dict(rowsperstrip=16),
        "deflate": dict(tile=(64, 64), compression="zlib"),
    }.get(layout, dict(tile=(64, 64)))
    if layout == "planar":
        tifffile.imwrite(path, np.moveaxis(arr, 2, 0), photometric="minisblack", planarconfig="separate",
                         **options, **kw)  # fmt: skip
    else:
        tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="contig", **options, **kw)
    return path


def folder(root, **kw) -> DataConfig:
    return DataConfig(source="folder", root=str(root), augment="none", normalize="none", labeled=False, **kw)


def boxes_by_formula(size: int, stride: int) -> list[tuple[int, int]]:
    rows = (H - size) // stride + 1
    cols = (W - size) // stride + 1
    return [(r * stride, c * stride) for r in range(rows) for c in range(cols)]


@pytest.mark.parametrize("layout", ["tiled", "planar", "strips", "deflate"])
def test_a_region_is_the_numpy_slice_of_the_whole_image(tmp_path, layout):
    arr = scene()
    path = write_tiff(tmp_path / "s.tif", arr, layout)
    for top, left, h, w in [(0, 0, 64, 64), (10, 37, 100, 200), (236, 436, 64, 64), (5, 5, 290, 490)]:
        want = arr[top : top + h, left : left + w]
        np.testing.assert_array_equal(read_region(path, (top, left, h, w)), want)


@pytest.mark.parametrize("in_memory", [True, False])
def test_chips_are_exact_counted_by_the_formula_and_named_by_position(tmp_path, in_memory):
    arr = scene()
    write_tiff(tmp_path / "scenes" / "s.tif", arr)
    size, stride = 64, 48
    ds = build_dataset(folder(tmp_path / "scenes", tile=[size, stride], in_memory=in_memory), "train")
    expected = [(t, c) for t, c in boxes_by_formula(size, stride) if arr[t : t + size, c : c + size].any()]
    # the zero block 64 x 128 holds the chips at left 0 and 48 of the first row (left 96 reaches column 160)
    assert len(boxes_by_formula(size, stride)) - len(expected) == 2
    ids = [sample_id(p, tmp_path / "scenes") for p in ds.files]
    assert ids == [f"s.tif#tile={t},{c}" for t, c in expected]
    assert ds.img_size == (size, size) and ds.channels == 3 and ds.dtype == torch.uint16
    for i in (0, 7, len(ds) - 1):
        t, c = expected[i]
        want = torch.from_numpy(arr[t : t + size, c : c + size].astype(np.int32)).permute(2, 0, 1)
        assert torch.equal(ds[i][0].to(torch.int32), want)


def test_a_numpy_scene_bands_first_is_cut_lazily(tmp_path):
    arr = scene(bands=4)
    np.save(tmp_path / "a.npy", np.ascontiguousarray(np.moveaxis(arr, 2, 0)))  # [C, H, W]
    ds = build_dataset(folder(tmp_path, tile={"size": [100, 200], "stride": [100, 150]}, in_memory=False))
    rows, cols = (H - 100) // 100 + 1, (W - 200) // 150 + 1
    assert len(ds) == rows * cols  # no chip is all zero
    assert str(ds.files[-1]).endswith("a.npy#tile=200,300")
    want = torch.from_numpy(arr[200:300, 300:500].astype(np.int32)).permute(2, 0, 1)
    assert torch.equal(ds[len(ds) - 1][0].to(torch.int32), want)


def test_nodata_is_the_files_own_tag_or_the_configs_and_its_chips_are_counted(tmp_path, caplog):
    arr = scene()
    arr[:64, :128] = 7
    write_tiff(tmp_path / "s.tif", arr, extratags=[(42113, "s", 0, "7", True)])  # GDAL_NODATA = 7
    whole = len(boxes_by_formula(64, 64))
    with caplog.at_level(logging.INFO):
        items, _ = expand([tmp_path / "s.tif"], [-1], item_spec(tile=64))
    assert len(items) == whole - 2 and "(2 empty or nodata left out)" in caplog.text
    for setting in ({"size": 64, "nodata": 0}, {"size": 64, "skip_nodata": False}):
        assert len(expand([tmp_path / "s.tif"], [-1], item_spec(tile=setting))[0]) == whole


def test_a_png_scene_is_read_whole_and_cut(tmp_path):
    rgb = np.random.default_rng(1).integers(1, 255, (90, 130, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    ds = build_dataset(folder(tmp_path, tile=[32, 32], in_memory=False))
    assert len(ds) == ((90 - 32) // 32 + 1) * ((130 - 32) // 32 + 1)
    # 4 chips a row: chip 5 is row 1, column 1
    assert torch.equal(ds[5][0], torch.from_numpy(rgb[32:64, 32:64].copy()).permute(2, 0, 1))


def test_a_tile_larger_than_the_images_is_one_line(tmp_path, caplog):
    write_tiff(tmp_path / "small.tif", scene()[:100, :100])
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path, tile=128))
    assert len(str(err.value).splitlines()) == 1
    assert "100x100, smaller than the 128x128 chips of data.tile.size" in str(err.value)
    write_tiff(tmp_path / "big.tif", scene())
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(folder(tmp_path, tile=128))
    assert {source_of(sample_id(p, tmp_path)) for p in ds.files} == {"big.tif"}
    assert "left out 1 of 2 file(s)" in caplog.text and "small.tif" in caplog.text


@pytest.mark.parametrize("bad", [0, [64], [64, 0], {"size": 64, "stride": 64, "overlap": 8}, {"size": 64,
                                 "nodata": "none"}, "64"])  # fmt: skip
def test_a_bad_tile_setting_is_one_line(bad):
    with pytest.raises(ValueError) as err:
        DataConfig(source="folder", root="x", tile=bad)
    assert len(str(err.value).splitlines()) == 1 and "data.tile" in str(err.value)
    assert tile_spec([64, 32]).stride == (32, 32) and tile_spec(64).size == (64, 64)


def test_the_split_file_lists_chip_ids_whose_source_is_the_scene(tmp_path):
    for cls, seed in (("a", 0), ("b", 1)):
        write_tiff(tmp_path / cls / "s.tif", scene(seed))
    cfg = DataConfig(source="folder", root=str(tmp_path), tile=64)
    from mimkit.data.datasets import holdout_folder

    folder_, items, labels, classes = holdout_folder(cfg)
    split = draw_split(folder_, items, labels, classes, 0.2, seed=0)
    assert all("#tile=" in rel for rel in split.train + split.test)
    assert {source_of(rel) for rel in split.test} <= {"a/s.tif", "b/s.tif"}
    per_class = len(boxes_by_formula(64, 64)) - 2  # the zero block covers two 64 x 64 chips
    assert len(split.train) + len(split.test) == 2 * per_class
    (tmp_path / "split.json").write_text(json.dumps(split.to_json()))
    test = build_dataset(DataConfig(source="folder", root=str(tmp_path), tile=64,
                                    split_file=str(tmp_path / "split.json")), "test")  # fmt: skip
    assert sorted(sample_id(p, tmp_path) for p in test.files) == sorted(split.test)


def test_shards_hold_the_chips_and_their_ids(tmp_path):
    arr = scene()
    write_tiff(tmp_path / "src" / "s.tif", arr)
    argv = ["shards", "make", str(tmp_path / "src"), str(tmp_path / "out"), "data.tile=[64, 64]"]
    assert main([*argv, "--shard-size", "10"]) == 0
    index = json.loads((tmp_path / "out" / "shards.json").read_text())
    assert index["images"] == len(boxes_by_formula(64, 64)) - 2
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        names = tar.getnames()
        sid = tar.extractfile(names[1]).read().decode()
    assert names[0].endswith(".npy") and names[1].endswith(".id") and sid.startswith("s.tif#tile=")
    t, c = map(int, sid.split("=", 1)[1].split(","))
    shards = ShardSet(DataConfig(source="shards", root=str(tmp_path / "out"), normalize="none"))
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        chip = shards.decode_member(names[0], tar.extractfile(names[0]).read())
    want = torch.from_numpy(arr[t : t + 64, c : c + 64].astype(np.int32)).permute(2, 0, 1)
    assert shards.img_size == (64, 64) and torch.equal(chip.to(torch.int32), want)
    assert main(["shards", "make", str(tmp_path / "src"), str(tmp_path / "o2"), "train.epochs=1"]) == 2


def test_a_part_names_its_file_and_place():
    p = Part(Path("/d/cls/brain.nii.gz"), 41, (0, 64, 32, 32), axis=2)
    assert sample_id(p, "/d") == "cls/brain.nii.gz#z=41;tile=0,64"
    assert str(p) == "/d/cls/brain.nii.gz#z=41;tile=0,64"
    assert source_of(sample_id(p, "/d")) == "cls/brain.nii.gz"
    assert sample_id(Part(p.path, 3), "/d") == "cls/brain.nii.gz#frame=3"
