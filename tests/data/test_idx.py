import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mimkit.data import DataConfig, build_dataset, load_idx, read_idx
from mimkit.data.config import FASHION_MNIST_ROOT

FASHION = Path(FASHION_MNIST_ROOT)
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST is not installed"
)


def idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written by hand: 00 00 <type> <ndim>, big-endian uint32 dims, data."""
    return bytes([0, 0, type_code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape) + payload


def write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray | None, gz: bool) -> None:
    """Write ``{prefix}-images-idx3-ubyte`` (and labels), raw or gzipped."""
    files = {f"{prefix}-images-idx3-ubyte": idx_bytes(0x08, images.shape, images.astype(np.uint8).tobytes())}
    if labels is not None:
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(
            0x08, labels.shape, labels.astype(np.uint8).tobytes()
        )
    for name, data in files.items():
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)


@pytest.fixture
def tiny_idx(tmp_path):
    """train: 3 images 2x2 with values 0..11, labels 0, 1, 2 (raw files); test: 2 images (gzipped)."""
    write_split(tmp_path, "train", np.arange(12).reshape(3, 2, 2), np.array([0, 1, 2]), gz=False)
    write_split(tmp_path, "t10k", np.full((2, 2, 2), 200), np.array([2, 0]), gz=True)
    return tmp_path


def test_read_idx_raw_and_gzip_give_the_same_tensor(tmp_path):
    data = idx_bytes(0x08, (2, 3), bytes(range(6)))
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b.gz").write_bytes(gzip.compress(data))
    expected = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.uint8)
    assert torch.equal(read_idx(tmp_path / "a"), expected)
    assert torch.equal(read_idx(tmp_path / "b.gz"), expected)


def test_read_idx_big_endian_int16_and_float32(tmp_path):
    (tmp_path / "i16").write_bytes(idx_bytes(0x0B, (2,), struct.pack(">hh", -2, 300)))
    (tmp_path / "f32").write_bytes(idx_bytes(0x0D, (1,), struct.pack(">f", 1.5)))
    assert read_idx(tmp_path / "i16").tolist() == [-2, 300]
    assert read_idx(tmp_path / "f32").tolist() == [1.5]


def test_read_idx_rejects_bad_files_naming_them(tmp_path):
    (tmp_path / "notidx").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "short").write_bytes(idx_bytes(0x08, (4, 4), bytes(10)))
    with pytest.raises(ValueError, match="notidx is not an IDX file"):
        read_idx(tmp_path / "notidx")
    with pytest.raises(ValueError, match=r"short: IDX header says shape \(4, 4\)"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_idx(tmp_path / "missing")


def test_load_idx_both_splits_and_name_variants(tiny_idx):
    images, labels = load_idx(tiny_idx, "train")
    assert images.shape == (3, 1, 2, 2) and images.dtype == torch.uint8
    assert images.flatten().tolist() == list(range(12))
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2]
    images, labels = load_idx(tiny_idx, "test")
    assert images.shape == (2, 1, 2, 2) and int(images.max()) == 200 and labels.tolist() == [2, 0]
    # the dotted names of some MNIST mirrors
    (tiny_idx / "train-images-idx3-ubyte").rename(tiny_idx / "train-images.idx3-ubyte")
    assert load_idx(tiny_idx, "train")[0].shape == (3, 1, 2, 2)


def test_missing_files_and_dirs_are_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as err:
        load_idx(tmp_path, "train")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="directory not found"):
        load_idx(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(DataConfig(source="fashion_mnist", root=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in str(err.value)
    write_split(tmp_path, "train", np.zeros((2, 2, 2)), None, gz=False)
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_idx(tmp_path, "train")
    assert load_idx(tmp_path, "train", require_labels=False)[1].tolist() == [-1, -1]


def test_idx_dataset_stats_classes_and_limit(tiny_idx):
    ds = build_dataset(DataConfig(source="idx", root=str(tiny_idx)), "train")
    assert len(ds) == 3 and ds.classes == ["0", "1", "2"] and ds.num_classes == 3
    assert ds.channels == 1 and ds.img_size == (2, 2) and ds.skipped == 0
    # values 0..11: mean 5.5, population std sqrt((12^2 - 1) / 12)
    assert ds.mean[0] == pytest.approx(5.5 / 255)
    assert ds.std[0] == pytest.approx(math.sqrt(143 / 12) / 255)
    image, label = ds[1]
    assert image.shape == (1, 2, 2) and image.flatten().tolist() == [4, 5, 6, 7] and label == 1
    test = build_dataset(DataConfig(source="idx", root=str(tiny_idx)), "test")
    assert test.mean == ds.mean and test.std == ds.std  # the training split's statistics
    limited = build_dataset(DataConfig(source="idx", root=str(tiny_idx), limit=2), "train")
    assert len(limited) == 2 and limited.mean[0] == pytest.approx(3.5 / 255)  # values 0..7


def test_idx_dataset_channels_and_resize(tiny_idx):
    ds = build_dataset(DataConfig(source="idx", root=str(tiny_idx), channels=3, img_size=4), "test")
    assert ds.images.shape == (2, 3, 4, 4) and ds.img_size == (4, 4)
    assert bool((ds.images == 200).all())  # a constant image stays constant when resized
    rgba = build_dataset(DataConfig(source="idx", root=str(tiny_idx), channels=4), "train")
    assert rgba.images.shape == (3, 4, 2, 2)
    assert torch.equal(rgba.images[:, 0], rgba.images[:, 2]) and bool((rgba.images[:, 3] == 255).all())


def test_normalize_options(tiny_idx):
    root = str(tiny_idx)
    none = build_dataset(DataConfig(source="idx", root=root, normalize="none"))
    assert none.mean == (0.0,) and none.std == (1.0,)
    given = build_dataset(DataConfig(source="idx", root=root, normalize=[[0.5], [0.25]], channels=3))
    assert given.mean == (0.5, 0.5, 0.5) and given.std == (0.25, 0.25, 0.25)
    imagenet = build_dataset(DataConfig(source="idx", root=root, normalize="imagenet", channels=3))
    assert imagenet.mean == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(ValueError, match="'imagenet' needs 3 channels"):
        build_dataset(DataConfig(source="idx", root=root, normalize="imagenet"))


@pytest.fixture(scope="module")
def fashion_train():
    return build_dataset(DataConfig(source="fashion_mnist"), "train")


@needs_fashion
def test_fashion_mnist_train_split(fashion_train):
    ds = fashion_train
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert torch.bincount(ds.labels).tolist() == [6000] * 10  # the published class balance
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    # independent check: the raw bytes after the 16-byte header, averaged with numpy
    raw = np.frombuffer(
        gzip.decompress((FASHION / "train-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16
    )
    assert raw.size == 60000 * 28 * 28
    assert 0.28 < raw.mean() / 255 < 0.29 and 0.35 < raw.std() / 255 < 0.36
    assert ds.mean[0] == pytest.approx(raw.mean() / 255, abs=1e-9)
    assert ds.std[0] == pytest.approx(raw.std() / 255, abs=1e-9)


@needs_fashion
def test_fashion_mnist_test_split_uses_training_statistics(fashion_train):
    test = build_dataset(DataConfig(source="fashion_mnist"), "test", train_dataset=fashion_train)
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.mean == fashion_train.mean and test.std == fashion_train.std
    small = build_dataset(DataConfig(source="fashion_mnist", limit=300), "test")
    assert len(small) == 300 and torch.equal(small.images, test.images[:300])
