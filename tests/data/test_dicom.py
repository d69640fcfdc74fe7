"""DICOM as archives hold it: pydicom's test files by transfer syntax (compressed ones against their
uncompressed twins), frames of multi-frame and enhanced objects, windows by name, the reasons of the files
that cannot be read and their count in one line."""

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mimkit.data import DataConfig, build_dataset
from mimkit.data.arrays import reason_kind, skipped_by_reason
from mimkit.data.dicom import WINDOW_PRESETS, dicom_frame_count, dicom_window, read_dicom
from mimkit.data.images import list_images
from mimkit.data.readers import ReadError, read_array

pydicom = pytest.importorskip("pydicom")
FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# pydicom's deliberately broken test files (its README.txt) and the reason each is refused with
BROKEN = {
    "JPEG2000-embedded-sequence-delimiter.dcm": "pixel data not decodable",  # 4 stream bytes overwritten
    "MR_truncated.dcm": "pixel data not decodable",  # pixel data shorter than Rows x Columns
    "nested_priv_SQ.dcm": "pixel data not decodable",  # pixel data without BitsAllocated
    "meta_missing_tsyntax.dcm": "without a transfer syntax",
    "badVR.dcm": "a bad NumberOfFrames",  # NumberOfFrames '1A'
}


def header(path: Path):
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM as pydicom reads it
        return None


def decodable_here(ds) -> bool:
    from pydicom.pixels import get_decoder

    return get_decoder(ds.file_meta.TransferSyntaxUID).is_available


def read(name: str, **kwargs) -> np.ndarray:
    return read_array(FILES / name, **kwargs)


def test_every_test_file_loads_with_its_shape_or_says_the_expected_reason():
    broken = dict(BROKEN)
    try:
        import gdcm  # noqa: F401
    except ImportError:  # a JP2 header inside DICOM's JPEG 2000 stream: GDCM reads it, Pillow does not
        broken["GDCMJ2K_TextGBR.dcm"] = "pixel data not decodable"
    outcomes = {"loaded": 0, "frames": 0}
    for path in list_images(FILES):  # the files a folder lists: .dcm and extension-less DICOM
        ds = header(path)
        if ds is None:
            with pytest.raises(ReadError, match="^not a readable DICOM file"):
                read_array(path)
            continue
        if path.name in broken:
            with pytest.raises(ReadError) as err:
                frames = dicom_frame_count(path)
                read_array(path, frame=0 if frames > 1 else None)
            assert reason_kind(str(path), str(err.value)) == broken[path.name], path.name
            continue
        if not any(
            k in pydicom.dcmread(path) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
        ):
            with pytest.raises(ReadError, match="^without pixel data"):
                read_array(path)
            continue
        syntax = ds.file_meta.TransferSyntaxUID
        if not decodable_here(ds):
            with pytest.raises(ReadError, match=f"^needs a decoder for {syntax.keyword} .*mimkit\\[dicom\\]"):
                read_array(path)
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        assert dicom_frame_count(path) == frames
        bands = int(ds.get("SamplesPerPixel", 1))
        for k in range(frames):
            arr = read_array(path, frame=k if frames > 1 else None)
            assert arr.shape == (ds.Rows, ds.Columns, bands), (path.name, k)
        outcomes["loaded"] += 1
        outcomes["frames"] += frames
    assert outcomes["loaded"] >= 83  # the uncompressed files alone (measured: 90 of 167 with mimkit[dicom])


@pytest.mark.parametrize(
    "twin, original",
    [
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),  # JPEG lossless (process 14), colour
    ],
)
def test_a_lossless_syntax_decodes_to_its_uncompressed_twin_exactly(twin, original):
    ds = header(FILES / twin)
    if not decodable_here(ds):
        pytest.skip(f"no decoder for {ds.file_meta.TransferSyntaxUID.keyword} installed (mimkit[dicom])")
    assert np.array_equal(read(twin), read(original))


def test_twelve_bit_jpeg_extended_decodes_through_imagecodecs():
    pytest.importorskip("imagecodecs")
    lossy = read("JPGExtended.dcm")[:, :, 0]  # 12-bit JPEG process 4: GDCM refuses it
    assert np.array_equal(lossy, read("JPEG-lossy.dcm")[:, :, 0])  # README: the same stream, fixed header
    # the same NM image compressed as lossy JPEG 2000: close, as two lossy codings are (a byte order or a
    # bit depth misread would not correlate)
    other = read("JPEG2000.dcm")[:, :, 0]
    assert lossy.shape == other.shape == (1024, 256)
    assert np.corrcoef(lossy.ravel(), other.ravel())[0, 1] > 0.9
    assert np.abs(lossy - other).mean() < 0.03 * (other.max() - other.min())


def test_frames_of_a_multiframe_object_match_pydicom_and_the_other_encodings():
    ds = pydicom.dcmread(FILES / "rtdose.dcm")
    dose = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)  # [15, 10, 10] in Gy
    assert dicom_frame_count(FILES / "rtdose.dcm") == 15
    for k in (0, 7, 14):
        frame = read("rtdose.dcm", frame=k)
        assert frame.shape == (10, 10, 1) and np.allclose(frame[:, :, 0], dose[k], rtol=1e-6)
        assert np.array_equal(read("rtdose_rle.dcm", frame=k), frame)  # RLE, frame by frame
        assert np.array_equal(read("rtdose_expb.dcm", frame=k), frame)  # big endian
    assert np.array_equal(read("rtdose.dcm", frame=0), read("rtdose_1frame.dcm"))
    with pytest.raises(
        ReadError, match="^multi-frame \\(15 frames: read them one by one with frame=0..14\\)"
    ):
        read("rtdose.dcm")
    with pytest.raises(ReadError, match="frame 15 out of range: the file has 15 frame"):
        read("rtdose.dcm", frame=15)
    with pytest.raises(ReadError, match="frame 1 of a file that holds one image"):
        read_array(Path("x.png"), frame=1)


def enhanced(tmp_path: Path) -> tuple[Path, np.ndarray, list[tuple[float, float]], list[tuple[float, float]]]:
    """CT_small.dcm made an enhanced 3-frame object: stored frames s, s + 10, s + 20; frame k's rescale
    (slope, intercept) and window (center, width) in its own functional groups, frame 2's window in the
    shared ones only; top-level rescale tags that must not be used."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    stored = ds.pixel_array.astype(np.int16)
    frames = np.stack([stored + 10 * k for k in range(3)])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype("<i2").tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 100.0, 12345.0
    rescales = [(1.0, -1024.0), (2.0, 0.0), (0.5, 10.0)]
    windows = [(40.0, 80.0), (-600.0, 1500.0), (400.0, 1800.0)]

    def item(**groups) -> Dataset:
        out = Dataset()
        for name, values in groups.items():
            inner = Dataset()
            for key, value in values.items():
                setattr(inner, key, value)
            setattr(out, name, Sequence([inner]))
        return out

    per_frame = []
    for k, (slope, intercept) in enumerate(rescales):
        groups = {"PixelValueTransformationSequence": {"RescaleSlope": slope, "RescaleIntercept": intercept}}
        if k < 2:
            groups["FrameVOILUTSequence"] = {"WindowCenter": windows[k][0], "WindowWidth": windows[k][1]}
        per_frame.append(item(**groups))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    shared = {"WindowCenter": windows[2][0], "WindowWidth": windows[2][1]}
    ds.SharedFunctionalGroupsSequence = Sequence([item(FrameVOILUTSequence=shared)])
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path)
    return path, frames, rescales, windows


def test_enhanced_frames_take_their_own_rescale_and_window(tmp_path):
    path, frames, rescales, windows = enhanced(tmp_path)
    assert dicom_frame_count(path) == 3
    for k, ((slope, intercept), (center, width)) in enumerate(zip(rescales, windows, strict=True)):
        values = frames[k].astype(np.float64) * slope + intercept
        assert np.allclose(read_dicom(path, frame=k)[:, :, 0], values)
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2  # PS3.3 C.11.2.1.2.1
        by_hand = np.where(
            values <= low, 0.0, np.where(values > high, 1.0, (values - (center - 0.5)) / (width - 1) + 0.5)
        )
        assert np.allclose(read_dicom(path, "voi", frame=k)[:, :, 0], by_hand, atol=1e-6)
    bone = frames[0].astype(np.float64) - 1024.0
    assert np.allclose(read_dicom(path, "bone", frame=0)[:, :, 0], dicom_window(bone, 400.0, 1800.0))


def test_window_presets_are_named_in_the_config_and_read_as_their_values():
    assert WINDOW_PRESETS["brain"] == (40.0, 80.0) and WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert DataConfig(window="liver").window == "liver"
    with pytest.raises(ValueError, match="data.window must be .*a preset \\(brain, lung, .*bone\\).*'lungs'"):
        DataConfig(window="lungs")
    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = WINDOW_PRESETS["soft_tissue"]
    assert np.allclose(
        read("CT_small.dcm", window="soft_tissue")[:, :, 0], dicom_window(hounsfield, center, width)
    )
    with pytest.raises(ReadError, match="unknown DICOM window 'lungs'; presets: brain, lung"):
        read("CT_small.dcm", window="lungs")


def test_a_syntax_without_its_decoder_is_one_line_naming_the_extra(tmp_path, monkeypatch, caplog):
    from pydicom.pixels import get_decoder

    decoder = get_decoder(pydicom.uid.JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})  # as if no JPEG-LS plugin were installed
    with pytest.raises(ReadError) as err:
        read("MR_small_jpeg_ls_lossless.dcm")
    assert str(err.value) == "needs a decoder for JPEGLSLossless (pip install 'mimkit[dicom]')"
    for name in ("MR_small.dcm", "CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "rtplan.dcm", "rtdose.dcm"):
        shutil.copy(FILES / name, tmp_path / name)
    with caplog.at_level(logging.WARNING, logger="mimkit.data"):
        ds = build_dataset(
            DataConfig(source="folder", root=str(tmp_path), labeled=False, channels=1, img_size=16)
        )
    # rtdose.dcm's 15 frames are 15 samples: 2 + 15 read, of 4 + 15 listed
    assert len(ds) == 17 and ds.skipped == 2
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert line == [
        f"skipped 2 of 19 unreadable image file(s) under {tmp_path}: 1 needs a decoder for JPEGLSLossless "
        "(e.g. MR_small_jpeg_ls_lossless.dcm), 1 without pixel data (e.g. rtplan.dcm)"
    ]


def test_skipped_files_are_counted_by_reason():
    failures = [
        ("d/a.dcm", "d/a.dcm: without pixel data (a DICOM report, plan, directory or structured data)"),
        ("d/b.png", "d/b.png: cannot identify image file 'd/b.png'"),
        ("d/c.dcm", "without pixel data (a DICOM report)"),
        ("d/e.jpg", "d/e.jpg: image file is truncated (3 bytes not processed)"),
        ("d/f.png", "cannot identify image file 'd/f.png'"),
        ("d/g.dcm", "without pixel data (a DICOM report)"),
    ]
    assert skipped_by_reason(failures, "d") == (
        "3 without pixel data (e.g. a.dcm), 2 cannot identify image file (e.g. b.png), "
        "1 image file is truncated (e.g. e.jpg)"
    )


def test_dicom_rescale_and_window_by_hand(tmp_path):
    path = FILES / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    hounsfield = stored * slope + intercept
    assert np.allclose(read_array(path)[:, :, 0], hounsfield)
    # a soft-tissue window, c = 40, w = 400: -160 and below -> 0, above 239 -> 1, linear between
    c, w = 40.0, 400.0
    expected = np.where(
        hounsfield <= c - 0.5 - (w - 1) / 2,
        0.0,
        np.where(hounsfield > c - 0.5 + (w - 1) / 2, 1.0, (hounsfield - (c - 0.5)) / (w - 1) + 0.5),
    )
    assert np.allclose(read_array(path, (c, w))[:, :, 0], expected, atol=1e-6)
    assert dicom_window(np.array([-160.0, 39.5, 239.0]), c, w).tolist() == [0.0, 0.5, 1.0]
    # MONOCHROME1 (low values bright): the windowed image is inverted
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inverted.dcm")
    assert np.allclose(read_array(tmp_path / "inverted.dcm", (c, w))[:, :, 0], 1.0 - expected, atol=1e-6)
    # the file's own window ("voi"): none in CT_small.dcm, then the same window written into its tags
    with pytest.raises(ReadError, match="no WindowCenter / WindowWidth"):
        read_array(path, "voi")
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = c, w
    ds.save_as(tmp_path / "voi.dcm")
    assert np.allclose(read_array(tmp_path / "voi.dcm", "voi")[:, :, 0], expected, atol=1e-6)


def test_dicom_window_width_below_one_is_refused():
    with pytest.raises(ValueError, match="width must be >= 1"):
        dicom_window(np.zeros(2), 0.0, 0.5)


def test_a_folder_of_the_test_files_counts_its_skipped_files_by_reason_in_one_line(caplog):
    cfg = DataConfig(source="folder", root=str(FILES), labeled=False, channels=1, img_size=32, clip=[1, 99])
    with caplog.at_level(logging.WARNING, logger="mimkit.data"):
        ds = build_dataset(cfg, "train")
    assert ds.dtype == torch.float32 and ds.channels == 1 and torch.isfinite(ds.images).all()
    frames = []  # every listed file is one sample, or its NumberOfFrames samples (read by pydicom here)
    for path in list_images(FILES):
        try:
            frames.append(int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1))
        except Exception:  # noqa: BLE001 - unreadable header (or a bad NumberOfFrames): one sample, skipped
            frames.append(1)
    assert len(ds) >= 160 and len(ds) + ds.skipped == sum(frames)
    assert all(Path(f).name != "CT_small.dcm" for f in ds.skipped_files)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(lines) == 1 and "\n" not in lines[0]
    counted = re.findall(r"(?:: |, )(\d+) ([^,]+?) \(e\.g\. [^)]+\)", lines[0])
    assert sum(int(n) for n, _ in counted) == ds.skipped  # every skipped file in one count
    kinds = {kind for _, kind in counted}
    assert {"without pixel data", "not a readable DICOM file"} <= kinds and "multi-frame" not in kinds
    assert not any(r.exc_info for r in caplog.records)  # pydicom's decoder tracebacks are not shown
