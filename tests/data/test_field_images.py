"""Field images: 16-bit and float data, any band count, .npy / TIFF / DICOM, band selection, percentile
clipping, augmentation per channel count, patch-embedding adaptation."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mimkit.data import DataConfig, build_dataset
from mimkit.data.images import DecodeOptions, decode_image, fit_bands, to_store
from mimkit.data.readers import ReadError, read_array
from mimkit.data.stats import apply_clip, channel_percentiles, channel_stats
from mimkit.data.subsets import subset_dataset

tifffile = pytest.importorskip("tifffile")


def png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit PNG written byte by byte (grey, RGB or RGBA ``[H, W, C]``): Pillow cannot write 16-bit
    colour, and a hand-made file checks the reader against the format, not against itself."""
    h, w, c = arr.shape
    colour_type = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def folder(root, **kw) -> DataConfig:
    return DataConfig(source="folder", root=str(root), augment="none", **kw)


# ----------------------------------------------------------------------------- bit depth


def test_16bit_grey_png_values_above_255_survive(tmp_path):
    values = np.array([[0, 255, 256, 1000], [4095, 40000, 65534, 65535]], dtype=np.uint16)[:, :, None]
    png16(tmp_path / "a.png", values)
    png16(tmp_path / "b.png", values[::-1].copy())
    ds = build_dataset(folder(tmp_path, normalize="none", labeled=False), "train")
    assert ds.dtype == torch.uint16 and ds.images.dtype == torch.uint16
    assert torch.equal(ds.images[0, 0].to(torch.int32), torch.from_numpy(values[:, :, 0].astype(np.int32)))


def test_a_subset_of_a_lazy_16bit_folder_decodes_its_files_as_the_folder_does(tmp_path):
    values = np.array([[0, 255, 256, 1000], [4095, 40000, 65534, 65535]], dtype=np.uint16)[:, :, None]
    png16(tmp_path / "a.png", values)
    png16(tmp_path / "b.png", values[::-1].copy())
    ds = build_dataset(folder(tmp_path, normalize="none", labeled=False, in_memory=False), "train")
    sub = subset_dataset(ds, torch.tensor([1]))
    assert sub.dtype == torch.uint16 and sub.clip == ds.clip
    assert torch.equal(sub[0][0], ds[1][0])  # 40000 stays 40000, not 40000 / 257 in 8 bits


def test_16bit_colour_png_keeps_each_channel(tmp_path):
    pytest.importorskip("imagecodecs")
    values = np.array([[[1000, 40000, 65535], [0, 300, 256]]], dtype=np.uint16)  # Pillow reads 3 156 255
    arr = read_array(png16(tmp_path / "c.png", values))
    assert arr.dtype == np.uint16 and np.array_equal(arr, values)


def test_unit_scale_is_the_same_for_every_storage_kind():
    # 8-bit 255 = 16-bit 65535 = float 1.0; 8-bit 51 = 0.2 = 16-bit 13107
    eight = np.array([[[0], [51], [255]]], dtype=np.uint8)
    assert to_store(eight, torch.uint16)[0, :, 0].tolist() == [0, 13107, 65535]
    assert np.allclose(to_store(eight, torch.float32)[0, :, 0], [0.0, 0.2, 1.0])
    sixteen = np.array([[[0], [13107], [65535]]], dtype=np.uint16)
    assert to_store(sixteen, torch.uint8)[0, :, 0].tolist() == [0, 51, 255]
    floats = np.array([[[-0.5], [0.2], [1.5]]], dtype=np.float32)  # clipped into [0, 1] for integer stores
    assert to_store(floats, torch.uint8)[0, :, 0].tolist() == [0, 51, 255]


def test_channel_stats_of_16bit_and_float_images_match_numpy():
    g = torch.Generator().manual_seed(0)
    deep = torch.randint(0, 65536, (3, 2, 5, 7), generator=g, dtype=torch.int32).to(torch.uint16)
    mean, std = channel_stats(deep)
    ref = deep.to(torch.int32).numpy().astype(np.float64) / 65535
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-12)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)), atol=1e-12)
    floats = torch.randn(3, 2, 5, 7, generator=g) * 300.0
    mean, std = channel_stats(floats)
    assert np.allclose(mean, floats.double().mean(dim=(0, 2, 3)).numpy())
    assert np.allclose(std, floats.double().std(dim=(0, 2, 3), unbiased=False).numpy())


def test_percentile_clip_by_hand(tmp_path):
    # channel 0 holds 0..999 once each: more than 0.5% of the values lie at or below 5 (6 of 1000), and
    # 99.5% is first reached at 994 (995 of 1000). Channel 1 is channel 0 times 10.
    ramp = np.arange(1000, dtype=np.uint16).reshape(20, 50)
    image = np.stack([ramp, ramp * 10], axis=2)
    lows, highs = channel_percentiles(torch.from_numpy(image).permute(2, 0, 1)[None], 0.5, 99.5)
    assert lows == (5.0, 50.0) and highs == (994.0, 9940.0)
    np.save(tmp_path / "a.npy", image)
    ds = build_dataset(folder(tmp_path, clip=[0.5, 99.5], labeled=False), "train")
    assert ds.clip == ((5.0, 50.0), (994.0, 9940.0))
    clipped = np.clip(ramp, 5, 994).astype(np.float64) / 65535
    assert ds.images[0, 0].to(torch.int32).min() == 5 and ds.images[0, 0].to(torch.int32).max() == 994
    assert ds.mean[0] == pytest.approx(clipped.mean(), abs=1e-12)
    assert ds.std[0] == pytest.approx(clipped.std(), abs=1e-12)
    # the test split (and an evaluation) clips with the training split's values
    explicit = build_dataset(folder(tmp_path, clip=[[5, 50], [994, 9940]], labeled=False), "train")
    assert explicit.clip == ds.clip and torch.equal(explicit.images, ds.images)


def test_apply_clip_on_float_and_uint16():
    x = torch.tensor([[[[-3.0, 0.5, 9.0]]]])
    assert apply_clip(x, ((0.0,), (1.0,))).tolist() == [[[[0.0, 0.5, 1.0]]]]
    y = torch.tensor([[[[3, 500, 60000]]]], dtype=torch.int32).to(torch.uint16)
    out = apply_clip(y, ((10.0,), (1000.0,)))
    assert out.dtype == torch.uint16 and out.to(torch.int32).tolist() == [[[[10, 500, 1000]]]]


def test_8bit_folders_keep_their_uint8_store(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((6, 5, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ds = build_dataset(folder(tmp_path, labeled=False), "train")
    assert ds.images.dtype == torch.uint8 and ds.images.nbytes == 3 * 3 * 6 * 5


# ----------------------------------------------------------------------------- bands


def constant_bands(values, shape=(32, 24)) -> np.ndarray:
    """``[H, W, C]`` uint16, band ``c`` filled with ``values[c]``."""
    return np.stack([np.full(shape, v, dtype=np.uint16) for v in values], axis=2)


BANDS = [100 * (c + 1) for c in range(13)]  # band c holds 100 (c + 1)


@pytest.mark.parametrize("layout", ["npy_hwc", "npy_chw", "tiff_planar", "tiff_contig"])
def test_13_band_order_is_kept(tmp_path, layout):
    arr = constant_bands(BANDS)
    path = tmp_path / ("x.npy" if layout.startswith("npy") else "x.tif")
    if layout == "npy_hwc":
        np.save(path, arr)
    elif layout == "npy_chw":
        np.save(path, np.moveaxis(arr, 2, 0))
    elif layout == "tiff_planar":
        tifffile.imwrite(path, np.moveaxis(arr, 2, 0), photometric="minisblack", planarconfig="separate")
    else:
        tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="contig")
    image = decode_image(path, 13, (32, 24), options=DecodeOptions(dtype=torch.uint16))
    assert image.shape == (13, 32, 24)
    assert image.to(torch.int32)[:, 0, 0].tolist() == BANDS


def test_band_selection_picks_what_it_says(tmp_path):
    np.save(tmp_path / "x.npy", constant_bands(BANDS))
    ds = build_dataset(folder(tmp_path, bands=[3, 2, 1], labeled=False, normalize="none"), "train")
    assert ds.channels == 3
    assert ds.images.to(torch.int32)[0, :, 0, 0].tolist() == [400, 300, 200]


def test_a_band_out_of_range_or_another_band_count_is_a_counted_skip(tmp_path, caplog):
    np.save(tmp_path / "a.npy", constant_bands(BANDS))
    np.save(tmp_path / "b.npy", constant_bands(BANDS[:4]))  # 4 bands: band 12 does not exist
    np.save(tmp_path / "c.npy", np.zeros((32, 24), dtype=np.uint16))  # 2 dimensions: one band
    ds = build_dataset(folder(tmp_path, bands=[12, 0], labeled=False), "train")
    assert len(ds) == 1 and ds.skipped == 2
    reasons = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 2 of 3 unreadable image file(s)" in reasons  # counted by reason, an example each
    assert "2 band index 12 out of range (e.g. b.npy)" in reasons
    with pytest.raises(ReadError, match="1 band\\(s\\), the data has 13: mixed channel counts"):
        fit_bands(np.zeros((32, 24, 1), dtype=np.uint16), 13, None, torch.uint16)
    caplog.clear()
    plain = build_dataset(folder(tmp_path, labeled=False), "train")  # 13 bands from the first file
    assert plain.channels == 13 and plain.skipped == 2
    reasons = " ".join(r.getMessage() for r in caplog.records)
    assert "2 another band count (e.g. b.npy)" in reasons


def test_every_file_failing_is_one_line_naming_the_reason(tmp_path):
    np.save(tmp_path / "a.npy", constant_bands(BANDS[:2]))
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path, bands=[5], labeled=False, img_size=8, channels=1), "train")
    assert "band index 5 out of range" in str(err.value) and "\n" not in str(err.value)


def test_object_npy_is_refused_without_running_it(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReadError, match="not a plain numeric .npy"):
        read_array(tmp_path / "x.npy")


# ----------------------------------------------------------------------------- augmentation, weights


def test_augmentations_keep_the_channel_count():
    from mimkit.data.transforms import FinetuneAugment, PretrainAugment
    from mimkit.masking.gmml import gmml_corrupt
    from mimkit.methods.views import TwoViewAugment

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 65536, (4, 13, 16, 24), generator=g, dtype=torch.int32).to(torch.uint16)
    mean, std = [0.5] * 13, [0.2] * 13
    x = PretrainAugment((16, 24), mean, std, "mae")(images)
    assert x.shape == (4, 13, 16, 24) and x.dtype == torch.float32
    assert x.abs().max() <= 0.5 / 0.2 + 1e-5  # unit values (/65535) normalised, not raw 16-bit numbers
    two = TwoViewAugment((16, 24), 13, mean, std)
    names = [type(m).__name__ for m in two.view1]
    assert "ColorJitter" not in names and "RandomSolarize" not in names and "RandomGrayscale" not in names
    a, b = two(x)
    assert a.shape == b.shape == (4, 13, 16, 24)
    ft = FinetuneAugment((16, 24), mean, std, randaug_n=2)
    assert ft.randaug is None and ft(images).shape == (4, 13, 16, 24)
    corrupted, mask = gmml_corrupt(x, generator=torch.Generator().manual_seed(0))
    assert corrupted.shape == (4, 13, 16, 24) and mask.shape == (4, 1, 16, 24)
    # every band of a corrupted pixel is corrupted together; the clean pixels are untouched
    assert torch.equal(corrupted * (1 - mask), x * (1 - mask))


@pytest.mark.parametrize("channels", [1, 6, 13])
def test_patch_embed_adaptation_keeps_equal_band_images_equal(tmp_path, channels):
    from mimkit.models import create_encoder
    from mimkit.weights import export_encoder_safetensors, load_weights

    def encoder(c):
        torch.manual_seed(0)
        return create_encoder(
            "vit_tiny_patch4_28", img_size=16, in_chans=c, embed_dim=32, depth=1, num_heads=2
        )

    rgb = encoder(3).eval()
    path = export_encoder_safetensors(rgb, tmp_path / "rgb.safetensors")
    target = encoder(channels).eval()
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        load_weights(target, path)  # strict by default: another channel count is refused
    load_weights(target, path, adapt_channels=True)
    grey = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = target.forward_features(grey.expand(-1, channels, -1, -1))
        theirs = rgb.forward_features(grey.expand(-1, 3, -1, -1))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_non_square_16bit_tiffs_decode_to_their_size(tmp_path):
    arr = np.arange(64 * 96 * 2, dtype=np.uint16).reshape(2, 64, 96) * 7
    tifffile.imwrite(tmp_path / "a.tif", arr, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(
        tmp_path / "b.tif", arr[:, :, :64].copy(), photometric="minisblack", planarconfig="separate"
    )
    ds = build_dataset(folder(tmp_path, labeled=False), "train")
    assert ds.img_size == (64, 96) and ds.channels == 2 and len(ds) == 2
    assert torch.equal(ds.images[0].to(torch.int32), torch.from_numpy(arr.astype(np.int32)))


def test_picture_bands_and_stretch():
    from mimkit.viz import display_bands
    from mimkit.viz.reconstruction import stretch_range

    assert display_bands(1, None) == [[0]] and display_bands(4, None) == [[0, 1, 2]]
    assert display_bands(13, [3, 2, 1]) == [[3, 2, 1]] and display_bands(2, "each") == [[0], [1]]
    for bad in ([13], [0, 1]):
        with pytest.raises(ValueError, match="1 or 3 band indices in 0-12"):
            display_bands(13, bad)
    # one band holding 0..100 once each: the 1st and 99th percentiles are 1 and 99 (linear quantiles)
    pixels = torch.arange(101, dtype=torch.float32).view(1, 1, 1, 101)
    lo, hi = stretch_range(pixels, 1.0, 99.0)
    assert float(lo) == pytest.approx(1.0) and float(hi) == pytest.approx(99.0)


def test_16bit_decoded_on_the_fly_equals_in_memory(tmp_path):
    for i in range(4):
        arr = (np.arange(32 * 24 * 2, dtype=np.uint32).reshape(32, 24, 2) * (i + 3) % 65536).astype(np.uint16)
        np.save(tmp_path / f"{i}.npy", arr)
    kw = dict(labeled=False, clip=[1, 99])
    memory = build_dataset(folder(tmp_path, in_memory=True, **kw), "train")
    lazy = build_dataset(folder(tmp_path, in_memory=False, **kw), "train")
    assert lazy.images is None and lazy.dtype == torch.uint16 and lazy.clip == memory.clip
    for i in range(4):
        assert torch.equal(lazy[i][0], memory.images[i])
