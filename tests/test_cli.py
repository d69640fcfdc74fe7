"""The CLI end to end on a few hundred Fashion-MNIST images, and its one-line errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from mimkit.cli import main

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="dataset-fashion-mnist is not installed")

MAE = "configs/mae_fashion_mnist.yaml"


@pytest.fixture(scope="module")
def tiny(tiny_mae_overrides):
    """conftest's tiny MAE recipe, 5 steps per epoch, 2 epochs, every step logged (later overrides win)."""
    return [*tiny_mae_overrides, "data.limit=320", "train.epochs=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("run")
    assert main(["pretrain", "--config", "configs/mae_fashion_mnist.yaml", f"output_dir={out}", *tiny]) == 0
    return out


def test_pretrain_writes_run_directory(run_dir):
    assert {"config.yaml", "last.pt", "metrics.jsonl"} <= {p.name for p in run_dir.iterdir()}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))  # 320 / 64 = 5 steps x 2 epochs
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert ckpt["step"] == 10 and ckpt["epoch"] == 2
    assert any(k.startswith("decoder.blocks.0.") for k in ckpt["model"])  # the full encoder + decoder


def test_the_run_records_and_says_what_it_ran_in(tmp_path, tiny, caplog):
    from mimkit.engine.config import load_config

    with caplog.at_level("INFO", logger="mimkit"):
        assert (
            main(["pretrain", "--config", "configs/mae_fashion_mnist.yaml", f"output_dir={tmp_path}", *tiny])
            == 0
        )
    lines = [r.getMessage() for r in caplog.records]
    # which precision (and why), which attention path, and the measured rate: one line each
    assert any(line.startswith("precision: auto -> ") for line in lines)
    assert any(line.startswith("training on cpu in ") and "attention: " in line for line in lines)
    assert any(
        line.startswith("trained steps 1-10 (640 images) in ") and "images/s" in line for line in lines
    )
    # "auto" is a request: the run's config holds what it resolved to on this machine, and says so
    text = (tmp_path / "config.yaml").read_text()
    ran = load_config(tmp_path / "config.yaml").train.precision
    assert ran in ("bf16", "fp32") and text.startswith(f"# train.precision auto ran as {ran} on cpu")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["config"]["train"]["precision"] == ran


def test_rerun_resumes_and_extends(run_dir, tiny):
    # a finished run asked for more epochs continues from its checkpoint instead of starting over
    assert (
        main(
            [
                "pretrain",
                "--config",
                "configs/mae_fashion_mnist.yaml",
                f"output_dir={run_dir}",
                *tiny,
                "train.epochs=3",
            ]
        )
        == 0
    )
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-5:] == [11, 12, 13, 14, 15] and len(steps) == 15


def test_reconstruct_png(run_dir, tmp_path, capsys):
    out = tmp_path / "recon.png"
    assert main(["reconstruct", str(run_dir), "--out", str(out), "--num", "3"]) == 0
    with Image.open(out) as img:
        width, height = img.size
    assert width > 4 * 100 and height > 3 * 100  # 4 columns x 3 rows of panels
    assert "wrote" in capsys.readouterr().out


def test_knn_prints_both_encoders(run_dir, capsys):
    assert (
        main(
            [
                "knn",
                str(run_dir),
                "--compare-random",
                "--train-limit",
                "300",
                "--test-limit",
                "100",
                "--k",
                "5",
                "20",
            ]
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kNN")]
    assert len(lines) == 2 and "pretrained" in lines[0] and "random init" in lines[1]
    for line in lines:
        acc = float(line.split("k=20: ")[1].rstrip("%"))
        assert 10.0 < acc <= 100.0  # above chance on 10 classes


def test_export_then_knn_from_encoder_file(run_dir, tmp_path, capsys):
    path = tmp_path / "enc.safetensors"
    assert main(["export", str(run_dir), str(path)]) == 0
    from safetensors.torch import load_file

    assert "blocks.1.attn.qkv.weight" in load_file(str(path))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "-c", MAE, "data.root=/nonexistent/dir"], "/nonexistent/dir"),
        (["pretrain", "-c", MAE, "train.epohcs=3"], "unknown config key 'train.epohcs'"),
        (["pretrain", "-c", MAE, "method.mask_ratio=1.5"], "mask_ratio must be in (0, 1), got 1.5"),
        (["pretrain", "-c", MAE, "encoder.img_size=30"], "not divisible by the patch size 4"),
        (["pretrain", "/nonexistent/dir"], "no such folder of images: '/nonexistent/dir'"),
        (["pretrain", "--config", "nope.yaml"], "nope.yaml"),
        (["reconstruct", "/nonexistent/run"], "/nonexistent/run"),
        (["knn", "/nonexistent/run"], "/nonexistent/run"),
    ],
)
def test_bad_input_one_clear_line(argv, message, tmp_path, capsys):
    argv = argv + (
        [f"output_dir={tmp_path}", "data.limit=64", "train.batch_size=32"] if argv[0] == "pretrain" else []
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mimkit: error:") and message in err
    assert "Traceback" not in err


def test_checkpoint_of_another_architecture(run_dir, tmp_path, capsys):
    # a run's weights into a wider encoder: one error naming the offending keys and shapes
    assert (
        main(
            [
                "knn",
                str(run_dir / "last.pt"),
                "--encoder",
                "vit_tiny_patch4_28",
                "--train-limit",
                "50",
                "--test-limit",
                "10",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cls_token: file (1, 1, 32) vs model (1, 1, 192)" in err


@pytest.mark.parametrize(
    "config, tiny, panels",
    [
        (
            "configs/simmim_vit_fashion_mnist.yaml",
            ["encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2"],
            "masked",
        ),
        (
            "configs/simmim_swin_fashion_mnist.yaml",
            ["encoder.embed_dim=16", "encoder.depths=[1,1,1]", "encoder.num_heads=[1,2,4]"],
            "masked",
        ),
        (
            "configs/sit_fashion_mnist.yaml",
            [
                "encoder.embed_dim=32",
                "encoder.depth=1",
                "encoder.num_heads=2",
                "method.recon_hidden_dim=32",
                "method.proj_hidden_dim=32",
                "method.proj_dim=16",
            ],
            "corrupted",
        ),
        (
            "configs/gmml_fashion_mnist.yaml",
            ["encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2", "method.recon_hidden_dim=32"],
            "corrupted",
        ),
    ],
    ids=["simmim-vit", "simmim-swin", "sit", "gmml"],
)
def test_other_methods_pretrain_and_reconstruct(config, tiny, panels, tmp_path, monkeypatch):
    common = [
        "data.limit=64",
        "train.batch_size=32",
        "train.epochs=1",
        "train.progress=false",
        "train.tensorboard=false",
        f"output_dir={tmp_path}",
    ]
    assert main(["pretrain", "--config", config, *tiny, *common]) == 0
    # the picture at the end of training (train.picture_every_minutes), of the run's last step
    assert [p.name for p in (tmp_path / "pictures").iterdir()] == ["reconstruction_step000002.png"]
    shown = {}
    import mimkit.viz.reconstruction

    real = mimkit.viz.reconstruction.save_reconstruction_grid

    def spy(images, outputs, *args, **kwargs):
        shown.update(outputs)
        return real(images, outputs, *args, **kwargs)

    monkeypatch.setattr(mimkit.viz.reconstruction, "save_reconstruction_grid", spy)
    assert main(["reconstruct", str(tmp_path), "--out", str(tmp_path / "r.png"), "--num", "2"]) == 0
    assert panels in shown and shown["reconstruction"].shape == shown[panels].shape
    assert (tmp_path / "r.png").stat().st_size > 0


def test_knn_and_eval_knn_are_one_command_with_the_same_defaults():
    from mimkit.cli import _parser

    alias = vars(_parser().parse_args(["knn", "runs/x"]))
    full = vars(_parser().parse_args(["eval", "knn", "runs/x"]))
    assert alias.pop("command") == "knn" and full.pop("command") == "eval"
    # ks None: 10, 20, 100, 200, those the memory bank holds (eval_protocols.default_ks)
    assert alias == full and alias["ks"] is None and alias["precision"] == "auto"


def test_a_hostile_or_foreign_last_pt_in_the_output_dir_is_one_line(tmp_path, tiny, capsys):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    hostile, foreign = tmp_path / "hostile", tmp_path / "foreign"
    hostile.mkdir(), foreign.mkdir()
    with open(hostile / "last.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)
    torch.save({"model": {}}, foreign / "last.pt")  # a weights file, not a training checkpoint
    for out, expected in ((hostile, "cannot read checkpoint"), (foreign, "not a mimkit training checkpoint")):
        argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", f"output_dir={out}", *tiny]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mimkit: error: ") and expected in err and "\n" not in err
        assert "pwned" not in err


def test_only_the_main_process_prints_the_run_directory(run_dir, tiny, capsys, monkeypatch):
    argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", f"output_dir={run_dir}", *tiny]
    monkeypatch.setattr("mimkit.cli.run_pretrain", lambda *args, **kwargs: run_dir)  # the training part
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it for the second process
    assert main(argv) == 0
    assert "run directory" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0
    assert "run directory" in capsys.readouterr().out


def test_reconstruction_leaves_matplotlibs_backend_alone(run_dir, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    assert main(["reconstruct", str(run_dir), "--out", str(tmp_path / "r.png"), "--num", "2"]) == 0
    assert matplotlib.get_backend() == before


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.decoder_dim=0", "decoder_dim must be an integer >= 1, got 0"),
        ("method.decoder_dim=18", "decoder_dim must be a multiple of 4"),
        ("method.decoder_heads=0", "decoder_heads must be a positive integer"),
    ],
)
def test_bad_decoder_sizes_are_one_line(tmp_path, tiny, capsys, override, message):
    argv = [
        "pretrain",
        "--config",
        "configs/mae_fashion_mnist.yaml",
        f"output_dir={tmp_path}",
        *tiny,
        override,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sigterm_checkpoints_and_exits_with_the_requeue_code(tmp_path, tiny, capsys, monkeypatch):
    import signal

    from mimkit.engine.runctl import EXIT_PREEMPTED
    from mimkit.engine.trainer import Trainer

    real = Trainer._optimizer_step

    def step_then_sigterm(self):
        lr = real(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM or a cloud scheduler sends it
        return lr

    monkeypatch.setattr(Trainer, "_optimizer_step", step_then_sigterm)
    argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", f"output_dir={tmp_path}", *tiny]
    assert main(argv) == EXIT_PREEMPTED == 75
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mimkit: stopped by SIGTERM after step 3") and "run the same command" in err
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(Trainer, "_optimizer_step", real)
    assert main(argv) == 0  # the same command resumes and finishes
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 10


def test_a_run_directory_in_use_is_refused_in_one_line(tmp_path, tiny, capsys):
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "since": "t"}))
    argv = ["pretrain", "--config", "configs/mae_fashion_mnist.yaml", f"output_dir={tmp_path}", *tiny]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mimkit: error: run directory") and "in use by pid 1" in err and "\n" not in err
    assert not (tmp_path / "config.yaml").exists()  # nothing written into the other run's directory


def test_a_locked_run_directory_is_refused_before_any_data_is_read(tmp_path, tiny, capsys, monkeypatch):
    """The lock is taken first: a second run stops at once, not after decoding its dataset (here a dataset
    builder that fails if called), and the run after it removes a dead writer's temporary checkpoint."""
    import socket
    import time

    import mimkit.pretrain

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was built before the run's lock was taken")

    monkeypatch.setattr(mimkit.pretrain, "build_dataset", no_data)
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "since": "t"}))
    argv = ["pretrain", "--config", MAE, f"output_dir={tmp_path}", *tiny]
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 1.0
    assert "in use by pid 1" in capsys.readouterr().err

    (tmp_path / ".lock").unlink()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = int(gone.stdout)  # a process id that is no longer alive
    stale = tmp_path / f".last.pt.tmp-{dead}"
    stale.write_bytes(b"half a checkpoint")
    with pytest.raises(AssertionError, match="before the run's lock"):  # the lock, then the data
        main(argv)
    assert not stale.exists() and not (tmp_path / ".lock").exists()
    with pytest.raises(AssertionError):
        main(["pretrain", "--config", MAE, f"output_dir={tmp_path / 'new'}", *tiny])
    assert not (tmp_path / "new").exists()  # a run that stopped before writing leaves no empty directory


def test_sit_takes_the_pixel_statistics_of_its_training_folder(tmp_path):
    """SiT's views undo the data's normalisation with the training data's mean / std, handed over by
    pretraining and recorded in the run's config: here a folder of grey 51 and 204 images, mean
    (51 + 204) / 2 / 255 = 0.5 and std (204 - 51) / 2 / 255 = 0.3 (Fashion-MNIST's: 0.286 / 0.353)."""
    from mimkit.pretrain import load_pretrained

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        Image.new("L", (28, 28), 51 if i % 2 else 204).save(folder / f"{i}.png")
    run = tmp_path / "run"
    argv = [
        "pretrain", "--config", "configs/sit_fashion_mnist.yaml", str(folder), f"output_dir={run}",
        "encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2", "method.recon_hidden_dim=32",
        "method.proj_hidden_dim=32", "method.proj_dim=16", "train.batch_size=4", "train.epochs=1",
        "train.progress=false", "train.tensorboard=false",
    ]  # fmt: skip
    assert main(argv) == 0
    saved = (run / "config.yaml").read_text()
    method, cfg, _ = load_pretrained(run)
    assert cfg.method["pixel_mean"] == pytest.approx([0.5]) and cfg.method["pixel_std"] == pytest.approx(
        [0.3]
    )
    assert "pixel_mean" in saved
    assert method.augment.mean.flatten().tolist() == pytest.approx([0.5])
    assert method.augment.std.flatten().tolist() == pytest.approx([0.3])


@pytest.mark.parametrize("command", ["predict", "embed", "reconstruct", "sweep"])
def test_one_process_commands_under_torchrun_are_refused_in_one_line(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for each process
    argv = {"predict": ["predict", str(tmp_path), str(tmp_path)]}
    argv |= {"embed": ["embed", str(tmp_path), "--out", str(tmp_path / "e.npz")]}
    argv |= {"reconstruct": ["reconstruct", str(tmp_path)], "sweep": ["sweep", "method.mask_ratio=0.5,0.75"]}
    assert main(argv[command]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mimkit: error: mimkit {command} runs in one process: run it without torchrun (pretrain, knn and "
        "eval are the commands that use several)"
    )
    assert not any(tmp_path.iterdir())  # nothing written
