"""NIfTI volumes as 2-D slices: RAS+ axes whatever the stored order, slice stride, empty slices left out,
intensity per volume (window, percentiles of the whole volume), 4-D as bands, bad input in one line, and
nibabel's own test volumes pretrained and scored end to end with each slice's id in the outputs."""

import csv
import logging

import numpy as np
import pytest
import torch

from mimkit.cli import main
from mimkit.data import DataConfig, build_dataset
from mimkit.data.dicom import dicom_window
from mimkit.data.parts import sample_id

nib = pytest.importorskip("nibabel")


def save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, np.eye(4) if affine is None else affine).to_filename(path)
    return path


def folder(root, **kw) -> DataConfig:
    return DataConfig(source="folder", root=str(root), augment="none", normalize="none", labeled=False, **kw)


def volume(shape=(4, 5, 6)) -> np.ndarray:
    return np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)


def expected_z(v: np.ndarray, k: int) -> np.ndarray:
    """Slice k along z of an [x, y, z] volume: rows down y from anterior (reversed), columns along x."""
    return v[:, :, k].T[::-1]


def test_z_slices_are_the_same_whatever_order_the_voxels_are_stored_in(tmp_path):
    v = volume()
    save(tmp_path / "a_ras.nii", v)
    save(tmp_path / "b_flipped.nii.gz", v[::-1].copy(), np.diag([-1.0, 1, 1, 1]))  # x stored right to left
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    save(tmp_path / "c_zyx.nii", np.ascontiguousarray(v.transpose(2, 1, 0)), swap)  # voxel axis 0 is z
    ds = build_dataset(folder(tmp_path, volume={"skip_empty": False}))
    assert len(ds) == 3 * 6 and ds.img_size == (5, 4) and ds.dtype == torch.float32
    for n, name in enumerate(("a_ras.nii", "b_flipped.nii.gz", "c_zyx.nii")):
        for k in range(6):
            assert sample_id(ds.files[6 * n + k], tmp_path) == f"{name}#z={k}"
            assert torch.equal(ds[6 * n + k][0][0], torch.from_numpy(expected_z(v, k).copy()))


def test_other_axes_stride_and_empty_slices(tmp_path):
    v = volume()
    v[:, :, 0] = 0
    v[:, :, 4] = 0  # background: the volume's minimum
    save(tmp_path / "v.nii", v)
    ds = build_dataset(folder(tmp_path, volume={"stride": 2}))
    assert [f.frame for f in ds.files] == [2]  # of 0, 2, 4: 0 and 4 are empty
    ds = build_dataset(folder(tmp_path, volume={"axis": "x", "skip_empty": False}))
    assert len(ds) == 4 and ds.img_size == (6, 5)
    assert torch.equal(ds[1][0][0], torch.from_numpy(v[1].T[::-1].copy()))  # rows down z, columns along y


def test_percentiles_are_the_whole_volumes_not_each_slices(tmp_path):
    v = volume()
    save(tmp_path / "v.nii", v)
    ds = build_dataset(folder(tmp_path, volume={"percentiles": [10, 90], "skip_empty": False}))
    low, high = np.percentile(v, [10, 90])
    for k in (0, 5):  # the first and last slices lie below and above the 10-90 range in parts
        want = np.clip((expected_z(v, k).astype(np.float64) - low) / (high - low), 0, 1).astype(np.float32)
        np.testing.assert_allclose(ds[k][0][0].numpy(), want, rtol=1e-6, atol=1e-6)
    assert ds[0][0].min() == 0 and ds[5][0].max() == 1


def test_a_window_follows_dicoms_rule(tmp_path):
    v = volume() * 10 - 400  # -390 .. 800
    save(tmp_path / "v.nii", v)
    ds = build_dataset(folder(tmp_path, window=[40, 400], volume={"skip_empty": False}))
    want = dicom_window(expected_z(v, 3), 40, 400)
    np.testing.assert_allclose(ds[3][0][0].numpy(), want, rtol=1e-6, atol=1e-6)


def test_a_4d_volumes_fourth_axis_is_its_bands(tmp_path):
    v = np.stack([volume(), -volume()], axis=3)
    save(tmp_path / "v.nii.gz", v)
    ds = build_dataset(folder(tmp_path, volume={"skip_empty": False}))
    assert ds.channels == 2 and torch.equal(ds[2][0][1], torch.from_numpy(-expected_z(v[..., 0], 2).copy()))
    picked = build_dataset(folder(tmp_path, bands=[1], volume={"skip_empty": False}))
    assert picked.channels == 1 and torch.equal(picked[2][0][0], ds[2][0][1])


@pytest.mark.parametrize(
    "data, settings, message",
    [
        (volume((4, 5, 3)), {"volume": {"stride": 4}}, "3 slice(s) along z, fewer than data.volume.stride=4"),
        (np.zeros((2, 2, 2, 2, 2), np.float32), {}, "a 5-D NIfTI (shape (2, 2, 2, 2, 2))"),
        (np.zeros((4, 5, 6), np.float32), {}, "every slice or chip empty"),
    ],
)
def test_bad_volumes_are_one_line(tmp_path, data, settings, message):
    save(tmp_path / "v.nii", data)
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path, **settings))
    assert len(str(err.value).splitlines()) == 1 and message in str(err.value)


@pytest.mark.parametrize("bad", [{"axis": "w"}, {"stride": 0}, {"percentiles": [50, 10]}, {"slices": 2}, [1]])
def test_a_bad_volume_setting_is_one_line(bad):
    with pytest.raises(ValueError) as err:
        DataConfig(source="folder", root="x", volume=bad)
    assert len(str(err.value).splitlines()) == 1 and "data.volume" in str(err.value)


def test_nibabels_volumes_pretrain_and_score_as_slices(tmp_path, caplog, tiny_mae_overrides):
    from nibabel.testing import data_path

    root = tmp_path / "vols"
    for cls, names in {"a": ["anatomical.nii"], "b": ["example4d.nii.gz"]}.items():
        (root / cls).mkdir(parents=True)
        for name in names:
            (root / cls / name).write_bytes((data_path / name).read_bytes())
    kept = 0  # z slices with a voxel above its band's minimum in some band (anatomical: 1 band, example4d: 2)
    for path in (root / "a" / "anatomical.nii", root / "b" / "example4d.nii.gz"):
        v = np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj)
        v = v.reshape(*v.shape[:3], -1)  # [x, y, z, bands]
        kept += int((v.max(axis=(0, 1)) > v.min(axis=(0, 1, 2))).any(axis=1).sum())
    run = tmp_path / "run"
    tiny = [o for o in tiny_mae_overrides if not o.startswith(("data.limit", "train.batch_size"))]
    with caplog.at_level(logging.INFO):
        assert main(["pretrain", "--config", "configs/mae_fashion_mnist.yaml", f"output_dir={run}",
                     f"data.root={root}", "data.source=folder", "data.img_size=28", "data.bands=[0]",
                     "data.group_by=none",  # one volume per class: nothing to hold out by volume
                     "train.batch_size=8", "train.max_steps=2", *tiny]) == 0  # fmt: skip
    assert f"cut into {kept} slices" in caplog.text
    assert main(["knn", str(run), "--k", "3", "--no-cache"]) == 0
    assert main(["embed", str(run), "--out", str(tmp_path / "e.npy"), "--split", "test"]) == 0
    with open(tmp_path / "e.csv") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert paths and all("#z=" in p and p.split("#", 1)[0].endswith((".nii", ".nii.gz")) for p in paths)


def test_pretraining_leaves_out_exactly_the_held_out_slices_of_a_labeled_folder_inside_it(tmp_path):
    from mimkit.data.datasets import holdout_folder
    from mimkit.data.splits import draw_split, write_split

    labeled = tmp_path / "labeled"
    save(labeled / "a" / "v.nii", volume())
    save(labeled / "b" / "w.nii", volume() * 2)
    cfg = folder(tmp_path, labeled_root=str(labeled), volume={"skip_empty": False})
    split = write_split(draw_split(*holdout_folder(cfg)[:4], 0.5, seed=0), tmp_path.parent / "split.json")
    cfg.split_file = str(tmp_path.parent / "split.json")
    assert len(split.test) == 6 and all("#z=" in rel for rel in split.test)  # 3 of each volume's 6
    pretrain = build_dataset(cfg, "pretrain")
    ids = {sample_id(p, labeled) for p in pretrain.files}
    assert len(pretrain) == 12 - 6 and not ids & set(split.test) and ids == set(split.train)
