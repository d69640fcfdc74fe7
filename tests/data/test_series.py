"""DICOM series read as volumes (``data.volume.series``): order, stride, empty slices, levels, the split."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mimkit.data import DataConfig, build_dataset
from mimkit.data.datasets import holdout_folder
from mimkit.data.groups import draw_for
from mimkit.data.parts import sample_id, source_of, volume_spec
from mimkit.data.series import order_series, slice_header, slice_normal

pydicom = pytest.importorskip("pydicom")

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # rows along x, columns along y: the normal is +z
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # rows along y, columns down z: (0,1,0) x (0,0,-1) = (-1,0,0)


def write_slice(
    path: Path, pixels: np.ndarray, series: str = "1.2.3", intercept: float = 0.0, **tags
) -> Path:
    """A single-frame 16-bit MONOCHROME2 CT slice with ``pixels`` stored, in ``series``, with ``tags``."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.PatientID = "CT", series, "P" + series
    ds.StudyInstanceUID = series + ".9"
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def block(value: int, shape=(6, 8)) -> np.ndarray:
    """Zeros with a 2 x 3 block of ``value``: a slice that is not all background (unless value is 0)."""
    arr = np.zeros(shape, dtype=np.uint16)
    arr[2:4, 3:6] = value
    return arr


def folder(root, **volume) -> DataConfig:
    return DataConfig(
        source="folder",
        root=str(root),
        augment="none",
        normalize="none",
        labeled=False,
        volume={"series": True, **volume},
    )


def ids(ds, root) -> list[str]:
    return [sample_id(item, root) for item in ds.files]


def test_slices_follow_their_position_along_the_normal_not_the_file_names(tmp_path):
    # axial: depth is z; file names in another order than z
    for name, z, value in (("a.dcm", 20.0, 30), ("b.dcm", -10.0, 10), ("c.dcm", 5.0, 20)):
        write_slice(
            tmp_path / name, block(value), ImagePositionPatient=[0, 0, z], ImageOrientationPatient=AXIAL
        )
    ds = build_dataset(folder(tmp_path))
    assert ids(ds, tmp_path) == ["b.dcm#slice=0", "c.dcm#slice=1", "a.dcm#slice=2"]
    assert [int(ds[k][0].max()) for k in range(3)] == [10, 20, 30]  # modality values, no levels
    # sagittal: the normal is -x, so the slice at x = 3 comes first
    assert slice_normal(SAGITTAL).tolist() == [-1.0, 0.0, 0.0]
    heads = []
    for name, x in (("s1.dcm", 1.0), ("s2.dcm", 3.0), ("s3.dcm", 2.0)):
        path = write_slice(tmp_path / "sag" / name, block(5), "7.7", ImagePositionPatient=[x, 0, 0],
                           ImageOrientationPatient=SAGITTAL)  # fmt: skip
        heads.append(slice_header(path))
    ordered, by = order_series(heads)
    assert by == "position" and [s.path.name for s in ordered] == ["s2.dcm", "s3.dcm", "s1.dcm"]


def test_without_positions_instance_numbers_then_file_names(tmp_path):
    heads = [
        slice_header(write_slice(tmp_path / n, block(1), InstanceNumber=k))
        for n, k in (("x.dcm", 3), ("y.dcm", 1), ("z.dcm", 2))
    ]
    ordered, by = order_series(heads)
    assert by == "InstanceNumber" and [s.path.name for s in ordered] == ["y.dcm", "z.dcm", "x.dcm"]
    heads.append(slice_header(write_slice(tmp_path / "w.dcm", block(1))))  # no InstanceNumber
    ordered, by = order_series(heads)
    assert by == "file name" and [s.path.name for s in ordered] == ["w.dcm", "x.dcm", "y.dcm", "z.dcm"]


def test_stride_then_empty_slices_left_out_and_counted(tmp_path, caplog):
    # six slices along z; 0 and 1 are all background (the series' minimum, 0)
    for k in range(6):
        write_slice(tmp_path / f"im{k}.dcm", block(0 if k < 2 else 10 * k), InstanceNumber=k + 1)
    with caplog.at_level(logging.INFO, logger="mimkit"):
        ds = build_dataset(folder(tmp_path, stride=2))
    assert ids(ds, tmp_path) == ["im2.dcm#slice=2", "im4.dcm#slice=4"]  # 0, 2, 4 chosen; 0 empty
    line = [r.getMessage() for r in caplog.records if "DICOM series" in r.getMessage()]
    assert len(line) == 1 and "1 DICOM series" in line[0] and "2 slices (1 empty left out)" in line[0]
    assert len(build_dataset(folder(tmp_path, skip_empty=False))) == 6


def test_percentiles_are_the_whole_series_not_each_slice(tmp_path):
    # modality values: stored - 1000 (the intercept); slices 100..400 stored in the block, 0 around it
    for k in range(4):
        write_slice(tmp_path / f"im{k}.dcm", block(100 * (k + 1)), intercept=-1000.0, InstanceNumber=k)
    ds = build_dataset(folder(tmp_path, percentiles=[0, 100], skip_empty=False))
    low, high = -1000.0, 400.0 - 1000.0  # the series' minimum and maximum
    for k in range(4):
        want = (block(100 * (k + 1)).astype(np.float64) - 1000.0 - low) / (high - low)
        np.testing.assert_allclose(ds[k][0][0].numpy(), want.astype(np.float32), atol=1e-6)
    assert ds.dtype == torch.float32 and float(ds[3][0].max()) == 1.0 and float(ds[0][0].max()) < 0.3


def test_a_series_shorter_than_the_stride_is_left_out_in_one_line(tmp_path, caplog):
    for k in range(3):
        write_slice(tmp_path / f"long{k}.dcm", block(5 + k), "1.1", InstanceNumber=k)
    write_slice(tmp_path / "short.dcm", block(9), "2.2")
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        ds = build_dataset(folder(tmp_path, stride=2))
    assert ids(ds, tmp_path) == ["long0.dcm#slice=0", "long2.dcm#slice=2"]
    lines = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(lines) == 1 and "left out 1 of 4 file(s)" in lines[0]
    assert "short.dcm: a series of 1 slice(s), fewer than data.volume.stride=2" in lines[0]


def test_the_held_out_part_is_drawn_by_series(tmp_path, caplog):
    for c in ("ct_a", "ct_b"):
        for s in range(3):
            for k in range(3):
                uid = f"1.{int(c == 'ct_b')}.{s}"
                write_slice(tmp_path / c / f"{s}_{k}.dcm", block(10 + k), uid, InstanceNumber=k)
    cfg = DataConfig(source="folder", root=str(tmp_path), holdout=0.34, volume={"series": True})
    with caplog.at_level(logging.INFO, logger="mimkit"):
        split = draw_for(cfg, *holdout_folder(cfg), seed=0)
    assert any("drawn by series" in r.getMessage() for r in caplog.records) and split.group_by == "series"
    # the "cut into" line is said once per folder and setting, not once per listing
    assert sum("cut into" in r.getMessage() for r in caplog.records) == 1
    train = {source_of(i).split("_")[0] for i in split.train}
    test = {source_of(i).split("_")[0] for i in split.test}
    assert len(split.test) == 2 * 3 and len(split.train) == 4 * 3  # one series of three per class
    assert {split.groups[i] for i in split.train}.isdisjoint(split.groups[i] for i in split.test)
    assert train and test


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"series": "yes"}, "data.volume.series must be true or false"),
        ({"series": True, "axis": "x"}, "in the plane it was acquired in (axis z), not along x"),
    ],
)
def test_bad_series_settings_are_one_line(value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        volume_spec(value)
    assert "\n" not in str(err.value)


def test_a_file_of_the_series_without_pixels_is_skipped_by_reason_like_any_unreadable_file(tmp_path, caplog):
    for k in range(3):
        write_slice(tmp_path / f"im{k}.dcm", block(10 + k), InstanceNumber=k)
    report = pydicom.dcmread(write_slice(tmp_path / "report.dcm", block(1), InstanceNumber=9))
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(report, keyword)
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with caplog.at_level(logging.INFO, logger="mimkit"):
        ds = build_dataset(folder(tmp_path))
    assert ids(ds, tmp_path) == ["im0.dcm#slice=0", "im1.dcm#slice=1", "im2.dcm#slice=2"]
    lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(lines) == 1 and "1 without pixel data (e.g. report.dcm)" in lines[0]


def test_a_corrupt_file_beside_series_is_a_group_of_its_own_not_an_error(tmp_path):
    for c in ("ct_a", "ct_b"):
        for s in range(2):
            for k in range(2):
                write_slice(tmp_path / c / f"{s}_{k}.dcm", block(10 + k), f"1.{int(c == 'ct_b')}.{s}")
    (tmp_path / "ct_b" / "garbage.dcm").write_bytes(bytes(range(256)) * 4)
    cfg = DataConfig(source="folder", root=str(tmp_path), holdout=0.5, volume={"series": True})
    split = draw_for(cfg, *holdout_folder(cfg), seed=0)
    assert (
        split.groups["ct_b/garbage.dcm"] == "ct_b/garbage.dcm"
        and split.groups["ct_b/0_1.dcm#slice=1"] == "1.1.0"
    )
    assert len(split.train) + len(split.test) == 9  # 8 slices and the file, which reading will skip


def test_each_header_is_read_once_per_file_version(tmp_path, monkeypatch):
    import os

    import mimkit.data.series as series

    reads = []
    real = series.dicom_header
    monkeypatch.setattr(series, "dicom_header", lambda path: reads.append(Path(path).name) or real(path))
    paths = [
        write_slice(tmp_path / "ct" / f"{k}.dcm", block(10 + k), f"7.{k // 2}", InstanceNumber=k)
        for k in range(4)
    ]
    cfg = DataConfig(source="folder", root=str(tmp_path), holdout=0.5, volume={"series": True})
    draw_for(cfg, *holdout_folder(cfg), seed=0)  # lists the folder and draws the split by series
    build_dataset(folder(tmp_path))
    assert sorted(reads) == [
        "0.dcm",
        "1.dcm",
        "2.dcm",
        "3.dcm",
    ]  # once each, however often the folder is listed
    stamp = os.stat(paths[1])
    os.utime(paths[1], ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # the file changed: read again
    assert slice_header(paths[1]).instance == 1 and reads.count("1.dcm") == 2
    with pytest.raises(series.ReadError, match="not a readable DICOM file"):
        slice_header(tmp_path / "ct" / "gone.dcm")
