import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.data import DataConfig, build_dataset, build_loader


def save(path: Path, mode: str, size: tuple[int, int], color, fmt: str | None = None) -> Path:
    """A one-colour image of ``size = (W, H)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def jpeg_bytes(size=(32, 24), color=(120, 60, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def folder(tmp_path, **overrides) -> DataConfig:
    return DataConfig(source="folder", root=str(tmp_path), **overrides)


@pytest.fixture
def labeled(tmp_path):
    """Two classes, mixed formats, sizes and modes, plus a non-image file that must be ignored."""
    save(tmp_path / "cat" / "a.png", "RGB", (20, 30), (200, 100, 50))
    save(tmp_path / "cat" / "sub" / "b.jpg", "RGB", (40, 40), (200, 100, 50))
    save(tmp_path / "dog" / "c.bmp", "L", (64, 32), 77)
    save(tmp_path / "dog" / "d.png", "RGBA", (16, 16), (200, 100, 50, 255))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    return tmp_path


def test_labeled_folder_classes_and_sizes(labeled):
    ds = build_dataset(folder(labeled, img_size=16, channels=3))
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 4
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.skipped == 0
    assert ds.images.shape == (4, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert [p.name for p in ds.files] == ["a.png", "b.jpg", "c.bmp", "d.png"]


def test_channel_conversion_to_rgb_and_grey(labeled):
    rgb = build_dataset(folder(labeled, img_size=8, channels=3))
    # one-colour images stay one colour through the resize
    assert rgb.images[0, :, 4, 4].tolist() == [200, 100, 50]  # RGB png
    assert np.allclose(rgb.images[1, :, 4, 4].tolist(), [200, 100, 50], atol=3)  # JPEG is lossy
    assert rgb.images[2, :, 4, 4].tolist() == [77, 77, 77]  # grey -> RGB
    assert rgb.images[3, :, 4, 4].tolist() == [200, 100, 50]  # opaque RGBA -> RGB
    grey = build_dataset(folder(labeled, img_size=8, channels=1))
    assert grey.images.shape == (4, 1, 8, 8)
    luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50  # ITU-R 601-2: 124.2
    assert abs(int(grey.images[0, 0, 4, 4]) - luma) <= 1
    assert abs(int(grey.images[3, 0, 4, 4]) - luma) <= 1
    assert int(grey.images[2, 0, 4, 4]) == 77


def test_alpha_is_laid_over_white_and_kept_for_four_channels(tmp_path):
    save(tmp_path / "clear.png", "RGBA", (4, 4), (10, 20, 30, 0))
    save(tmp_path / "half.png", "RGBA", (4, 4), (0, 0, 0, 128))
    save(tmp_path / "grey.png", "L", (4, 4), 90)
    rgb = build_dataset(folder(tmp_path, channels=3))
    assert rgb.images[0, :, 0, 0].tolist() == [255, 255, 255]  # fully transparent -> the white background
    assert abs(int(rgb.images[2, 0, 0, 0]) - 255 * (1 - 128 / 255)) <= 1  # black at alpha 128 over white
    rgba = build_dataset(folder(tmp_path, channels=4))
    assert rgba.images[0, :, 0, 0].tolist() == [10, 20, 30, 0]
    assert rgba.images[1, :, 0, 0].tolist() == [90, 90, 90, 255]


def test_flat_and_recursive_folders_are_unlabeled(tmp_path):
    save(tmp_path / "x.png", "L", (8, 8), 10)
    save(tmp_path / "deeper" / "y.png", "L", (8, 8), 20)
    save(tmp_path / "deeper" / "more" / "z.gif", "L", (8, 8), 30)
    save(tmp_path / ".hidden" / "h.png", "L", (8, 8), 40)  # hidden folders are not data
    ds = build_dataset(folder(tmp_path))
    assert ds.classes == [] and ds.num_classes == 0 and ds.labels.tolist() == [-1, -1, -1]
    assert sorted(ds.images[:, 0, 0, 0].tolist()) == [10, 20, 30]
    image, label = ds[0]
    assert image.shape == (1, 8, 8) and label == -1


def test_sub_folders_only_can_be_forced_unlabeled(labeled):
    ds = build_dataset(folder(labeled, img_size=8, labeled=False))
    assert ds.classes == [] and len(ds) == 4 and bool((ds.labels == -1).all())


def test_size_and_channels_are_inferred_from_the_first_image(tmp_path):
    save(tmp_path / "a.png", "L", (12, 10), 5)  # W=12, H=10, grey
    save(tmp_path / "b.png", "RGB", (30, 30), (1, 2, 3))
    ds = build_dataset(folder(tmp_path))
    assert ds.img_size == (10, 12) and ds.channels == 1 and ds.images.shape == (2, 1, 10, 12)


def test_center_crop_keeps_the_aspect_ratio_stretch_does_not(tmp_path):
    arr = np.zeros((20, 40), np.uint8)
    arr[:, 5:35] = 255  # white middle, black 5-pixel bars left and right
    Image.fromarray(arr).save(tmp_path / "wide.png")
    cropped = build_dataset(folder(tmp_path, img_size=16))
    # scale 0.8 fits the height; the centre 20 columns (10..30) are all white
    assert int(cropped.images.min()) >= 250
    stretched = build_dataset(folder(tmp_path, img_size=16, resize_mode="stretch"))
    assert int(stretched.images[0, 0, 8, 0]) < 128 and int(stretched.images[0, 0, 8, 8]) >= 250


def test_dataset_statistics_of_a_folder(tmp_path):
    save(tmp_path / "black.png", "RGB", (4, 4), (0, 0, 0))
    save(tmp_path / "red.png", "RGB", (4, 4), (255, 0, 0))
    ds = build_dataset(folder(tmp_path))
    # red channel: half 0, half 255 -> mean 0.5, std 0.5; green and blue are constant -> std set to 1
    assert ds.mean == pytest.approx((0.5, 0.0, 0.0)) and ds.std == pytest.approx((0.5, 1.0, 1.0))


def corrupt_files(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    bad = root / "noise.png"
    bad.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    truncated = root / "truncated.jpg"
    truncated.write_bytes(jpeg_bytes()[:300])
    empty = root / "empty.bmp"
    empty.write_bytes(b"")
    return [bad, truncated, empty]


def test_corrupt_files_are_skipped_counted_and_reported(tmp_path, caplog):
    for i in range(3):
        save(tmp_path / f"good{i}.png", "RGB", (10, 10), (i, i, i))
    bad = corrupt_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mimkit.data"):
        ds = build_dataset(folder(tmp_path, img_size=8))
    assert len(ds) == 3 and ds.skipped == 3
    assert sorted(ds.skipped_files) == sorted(str(p) for p in bad)
    assert "skipped 3 of 6 unreadable" in caplog.text and "truncated.jpg" in caplog.text


def test_corrupt_files_in_a_lazy_folder_are_dropped_by_the_loader(tmp_path, caplog):
    for i in range(5):
        save(tmp_path / f"good{i}.png", "L", (10, 10), i)
    corrupt_files(tmp_path)
    ds = build_dataset(folder(tmp_path, img_size=8, in_memory=False))
    assert ds.images is None and len(ds) == 8 and ds.skipped == 0  # not decoded yet
    for workers in (0, 1):  # the failures come back from worker processes too
        loader = build_loader(ds, batch_size=4, shuffle=False, drop_last=False, num_workers=workers)
        with caplog.at_level(logging.WARNING, logger="mimkit.data"):
            batches = list(loader)
        images = torch.cat([b[0] for b in batches])
        assert images.shape == (5, 1, 8, 8) and sorted(images[:, 0, 0, 0].tolist()) == [0, 1, 2, 3, 4]
        assert ds.skipped == 3 and "unreadable" in caplog.text


def test_train_and_test_splits(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                save(tmp_path / split / cls / f"{i}.png", "L", (6, 6), 50 if cls == "a" else 150)
    train = build_dataset(folder(tmp_path))
    test = build_dataset(folder(tmp_path), "test")
    assert len(train) == 6 and len(test) == 4 and test.classes == train.classes == ["a", "b"]
    assert test.mean == train.mean == pytest.approx((100 / 255,))  # the training split's statistics
    assert test.labels.tolist() == [0, 0, 1, 1]
    reused = build_dataset(folder(tmp_path), "test", train_dataset=train)
    assert torch.equal(reused.images, test.images) and reused.mean == train.mean
    assert torch.equal(build_dataset(folder(tmp_path), "train", train_dataset=train).images, train.images)
    # a test class the training split does not have
    save(tmp_path / "test" / "c" / "0.png", "L", (6, 6), 0)
    with pytest.raises(ValueError, match=r"class folders \['c'\]"):
        build_dataset(folder(tmp_path), "test")


def test_test_split_keeps_training_class_indices(tmp_path):
    for cls in ("a", "b", "c"):
        save(tmp_path / "train" / cls / "0.png", "L", (4, 4), 0)
    save(tmp_path / "val" / "c" / "0.png", "L", (4, 4), 0)  # only the last class, in "val"
    test = build_dataset(folder(tmp_path), "test")
    assert test.classes == ["a", "b", "c"] and test.labels.tolist() == [2]


def test_root_with_a_val_folder_but_no_train_folder(tmp_path):
    save(tmp_path / "x.png", "L", (4, 4), 0)
    save(tmp_path / "val" / "y.png", "L", (4, 4), 0)
    assert len(build_dataset(folder(tmp_path))) == 1  # val/ is not part of the training images
    assert len(build_dataset(folder(tmp_path), "test")) == 1


def one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message


def test_clear_errors_for_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(folder(tmp_path / "missing"))
    one_line(err, str(tmp_path / "missing"), "not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path / "empty"))
    one_line(err, str(tmp_path / "empty"), "no image files")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        build_dataset(folder(tmp_path / "texts"))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path / "file.png"))
    one_line(err, "is a file")


def test_clear_errors_for_bad_splits_and_labels(tmp_path):
    save(tmp_path / "x.png", "L", (4, 4), 0)
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(folder(tmp_path), "test")
    one_line(err, str(tmp_path / "test"), str(tmp_path / "val"))
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path), "validation")
    one_line(err, "'validation'", "train", "test")
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path, labeled=True))
    one_line(err, "one sub-folder per class", "x.png")


def test_all_files_unreadable_is_an_error(tmp_path):
    corrupt_files(tmp_path)
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path, img_size=8))
    one_line(err, "none of the first 3 image files", str(tmp_path), "can be read")  # inferring the shape
    with pytest.raises(ValueError) as err:
        build_dataset(folder(tmp_path, img_size=8, channels=1))
    one_line(err, "none of the 3 image files", str(tmp_path), "could be read")  # decoding them


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loops_do_not_hang(tmp_path):
    save(tmp_path / "a" / "x.png", "L", (4, 4), 0)
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    ds = build_dataset(folder(tmp_path, labeled=False))
    assert len(ds) == 1
