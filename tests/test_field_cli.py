"""Field images end to end from the CLI: 13-band 16-bit TIFFs, pydicom's DICOM test files and 16-bit PNGs
pretrain with MAE and evaluate; non-square images pretrain with MAE, SimMIM and SiT and reconstruct."""

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from mimkit.cli import main

tifffile = pytest.importorskip("tifffile")

TINY_ENCODER = ["encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2"]
TINY = [
    *TINY_ENCODER,
    "train.batch_size=8",
    "train.epochs=2",
    "train.warmup_epochs=0",
    "train.precision=fp32",
    "train.progress=false",
    "train.tensorboard=false",
]
TINY_MAE = [*TINY, "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2"]


def two_classes(root: Path, write, n_train=16, n_test=8):
    """``root/{train,test}/{low,high}/i.ext`` with ``write(path_without_suffix, class_index, rng)``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(("low", "high")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n // 2):
                write(root / split / name / str(i), c, rng)


def pretrain_and_knn(tmp_path, capsys, data: list[str], extra=()) -> str:
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "--config",
        "configs/mae_fashion_mnist.yaml",
        *TINY_MAE,
        *data,
        *extra,
        f"output_dir={run}",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["knn", str(run), "--k", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "k=3" in out
    assert main(["reconstruct", str(run), "--out", str(tmp_path / "r.png"), "--num", "2"]) == 0
    assert (tmp_path / "r.png").stat().st_size > 0
    return out


def test_13_band_16bit_tiffs(tmp_path, capsys):
    def write(path, c, rng):  # the classes differ in level: 20,000 apart on every band
        img = (rng.integers(0, 3000, size=(13, 64, 64)) + 20000 * c).astype(np.uint16)
        tifffile.imwrite(path.with_suffix(".tif"), img, photometric="minisblack", planarconfig="separate")

    two_classes(tmp_path / "tiles", write)
    data = ["data.source=folder", f"data.root={tmp_path / 'tiles'}", "data.clip=[0.5, 99.5]"]
    out = pretrain_and_knn(tmp_path, capsys, data, ["encoder.patch_size=16"])
    import yaml

    stats = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stats["data"]["clip"] == [0.5, 99.5]
    assert (
        main(
            ["reconstruct", str(tmp_path / "run"), "--out", str(tmp_path / "b.png"), "--bands", "3", "2", "1"]
        )
        == 0
    )
    assert "100.00%" in out  # 20,000 apart: any encoder separates them


def test_16bit_pngs(tmp_path, capsys):
    def write(path, c, rng):
        img = (rng.integers(0, 1000, size=(32, 32)) + 30000 * c).astype(">u2")
        raw = b"".join(b"\x00" + img[y].tobytes() for y in range(32))

        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        head = struct.pack(">IIBBBBB", 32, 32, 16, 0, 0, 0, 0)
        body = chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
        path.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n" + body)

    two_classes(tmp_path / "png", write)
    pretrain_and_knn(tmp_path, capsys, ["data.source=folder", f"data.root={tmp_path / 'png'}"])


def test_pydicom_test_files_by_modality(tmp_path, capsys):
    pydicom = pytest.importorskip("pydicom")
    files = Path(pydicom.__file__).parent / "data" / "test_files"
    # CT and MR files, as classes; every second file of each to the test split
    by_modality = {"CT": [], "MR": []}
    for path in sorted(p for p in files.rglob("*") if p.is_file()):  # DICOM folders: often no extension
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not every test file is DICOM
            continue
        if str(ds.get("Modality", "")) in by_modality:
            by_modality[str(ds.Modality)].append(path)
    assert min(len(v) for v in by_modality.values()) >= 4
    for modality, paths in by_modality.items():
        for i, path in enumerate(paths):
            split = "test" if i % 2 else "train"
            (tmp_path / "dicom" / split / modality).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / "dicom" / split / modality / f"{i}_{path.name}")
    data = [
        "data.source=folder",
        f"data.root={tmp_path / 'dicom'}",
        "data.channels=1",
        "data.img_size=32",
        "data.clip=[1, 99]",
    ]
    pretrain_and_knn(tmp_path, capsys, data, ["encoder.patch_size=8", "train.batch_size=4"])


@pytest.mark.parametrize(
    "config, extra",
    [
        (
            "configs/mae_fashion_mnist.yaml",
            ["method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2"],
        ),
        (
            "configs/simmim_vit_fashion_mnist.yaml",
            ["encoder.name=vit_tiny_patch4_28", "method.mask_patch_size=32"],
        ),
        (
            "configs/sit_fashion_mnist.yaml",
            ["method.recon_hidden_dim=32", "method.proj_hidden_dim=32", "method.proj_dim=16"],
        ),
        ("configs/simmim_swin_fashion_mnist.yaml", []),  # window 4 fits every stage of 64x96 at patch 2
    ],
    ids=["mae", "simmim", "sit", "simmim-swin"],
)
def test_non_square_folders_pretrain_and_reconstruct(tmp_path, config, extra):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"{i}.png"
        )
    run = tmp_path / "run"
    data = [
        "data.source=folder",
        f"data.root={tmp_path / 'img'}",
        "data.img_size=[64, 96]",
    ]
    tiny = TINY if "swin" not in config else TINY[len(TINY_ENCODER) :]  # Swin: its own small recipe
    if "swin" not in config:
        data.append("encoder.patch_size=16")
    assert main(["pretrain", "--config", config, *tiny, *extra, *data, f"output_dir={run}"]) == 0
    assert (
        main(["reconstruct", str(run), "--out", str(tmp_path / "r.png"), "--num", "2", "--split", "train"])
        == 0
    )


def test_rgb_weights_start_a_13_band_run_only_when_asked(tmp_path, capsys):
    import torch

    from mimkit.models import create_encoder
    from mimkit.pretrain import load_pretrained
    from mimkit.weights import adapt_patch_embed, export_encoder_safetensors

    torch.manual_seed(0)
    rgb = create_encoder("vit_tiny_patch4_28", img_size=32, in_chans=3, patch_size=16, embed_dim=32, depth=1,
                         num_heads=2)  # fmt: skip
    weights = export_encoder_safetensors(rgb, tmp_path / "rgb.safetensors")
    (tmp_path / "tiles").mkdir()
    for i in range(8):
        np.save(tmp_path / "tiles" / f"{i}.npy", np.full((13, 32, 32), 1000 * i, dtype=np.uint16))
    argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", *TINY_MAE, "encoder.patch_size=16",
            "data.source=folder", f"data.root={tmp_path / 'tiles'}", f"init_weights={weights}"]  # fmt: skip
    assert main([*argv, f"output_dir={tmp_path / 'strict'}"]) == 2
    err = capsys.readouterr().err
    assert "patch_embed.proj.weight: file (32, 3, 16, 16) vs model (32, 13, 16, 16)" in err
    # adapted, and lr 0 so that the weights stay as loaded
    run = tmp_path / "adapted"
    assert (
        main([*argv, "adapt_channels=true", "train.blr=0", "train.weight_decay=0", f"output_dir={run}"]) == 0
    )
    method, _, _ = load_pretrained(run)
    loaded = method.encoder.state_dict()
    expected = adapt_patch_embed(rgb.patch_embed.proj.weight.detach(), 13)
    assert torch.equal(loaded["patch_embed.proj.weight"], expected)
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], rgb.state_dict()["blocks.0.attn.qkv.weight"])
