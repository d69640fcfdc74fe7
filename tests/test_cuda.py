"""The CUDA paths, which a CPU run cannot check (skipped without a GPU, so on CI).

Run on a GPU machine with ``pytest tests/test_cuda.py``: the fused SDPA kernels (flash for the ViT,
memory-efficient with Swin's bias + mask) accept mimkit's attention calls, CPU and CUDA compute the same
losses and gradients in fp32, a training step of every method makes no host synchronisation, and a
checkpoint written on the GPU loads and resumes on the CPU.
"""

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mimkit import create_encoder, create_method
from mimkit.engine import Trainer
from mimkit.engine.config import load_config
from mimkit.methods.views import TwoViewAugment
from mimkit.weights import read_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off, so that CUDA's fp32 is comparable with the CPU's."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_vit_attention_runs_on_the_flash_kernel_under_bf16():
    torch.manual_seed(0)
    enc = create_encoder("vit_small_patch16", img_size=64).cuda()  # head dim 64
    x = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the call does not fit the kernel
            flash = enc.forward_features(x)
            flash.float().square().mean().backward()
        grad = enc.blocks[0].attn.qkv.weight.grad.clone()
        enc.zero_grad()
        enc.set_fused_attn(False)
        plain = enc.forward_features(x)
        plain.float().square().mean().backward()
    torch.testing.assert_close(flash.float(), plain.float(), atol=5e-2, rtol=5e-2)  # bf16 rounding
    torch.testing.assert_close(grad, enc.blocks[0].attn.qkv.weight.grad, atol=5e-3, rtol=5e-2)


def test_swin_attention_with_bias_and_shift_mask_runs_on_the_efficient_kernel():
    torch.manual_seed(0)
    enc = create_encoder("swin_tiny_patch2_window4_32").cuda()
    x = torch.randn(4, 1, 32, 32, device="cuda")
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        fused = enc.forward_features(x)
    enc.set_fused_attn(False)
    plain = enc.forward_features(x)
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mae", "simmim"])
def test_cuda_and_cpu_agree_in_fp32(name):
    torch.manual_seed(0)
    if name == "mae":
        enc = create_encoder("vit_tiny_patch4_28", depth=2)
        method = create_method("mae", encoder=enc, decoder_dim=64, decoder_depth=1, decoder_heads=2)
        x = torch.randn(8, 1, 28, 28)
        kwargs = {"noise": torch.rand(8, 49)}
    else:
        enc = create_encoder("vit_tiny_patch4_32", depth=2, in_chans=1)
        method = create_method("simmim", encoder=enc, mask_patch_size=8, mask_ratio=0.6)
        x = torch.randn(8, 1, 32, 32)
        kwargs = {"mask": (torch.rand(8, 8, 8) < 0.5).float()}
    results = []
    for device in ("cpu", "cuda"):
        method.to(device).zero_grad()
        out = method(x.to(device), **{k: v.to(device) for k, v in kwargs.items()})
        out["loss"].backward()
        grads = {n: p.grad.detach().cpu() for n, p in method.named_parameters() if p.grad is not None}
        results.append((out["loss"].detach().cpu(), grads))
    (loss_cpu, grads_cpu), (loss_gpu, grads_gpu) = results
    torch.testing.assert_close(loss_gpu, loss_cpu, atol=1e-5, rtol=1e-5)
    assert grads_cpu.keys() == grads_gpu.keys() and grads_cpu
    for key in grads_cpu:
        torch.testing.assert_close(grads_gpu[key], grads_cpu[key], atol=1e-5, rtol=1e-3, msg=key)


RECIPES = {
    "mae": ("mae_fashion_mnist.yaml", []),
    "simmim_vit": ("simmim_vit_fashion_mnist.yaml", []),
    "simmim_swin": ("simmim_swin_fashion_mnist.yaml", []),
    "sit": ("sit_fashion_mnist.yaml", ["encoder.depth=2"]),
    "gmml": ("gmml_fashion_mnist.yaml", ["encoder.depth=2"]),
}


@contextmanager
def sync_debug(mode: str):
    """CUDA's sync debug mode: ``"error"`` makes any host synchronisation raise where it happens."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def _under(mode, fn):
    def wrapper(*args, **kwargs):
        with sync_debug(mode):
            return fn(*args, **kwargs)

    return wrapper


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_training_steps_make_no_host_sync_and_gpu_checkpoints_resume_on_cpu(recipe, tmp_path, monkeypatch):
    from mimkit.pretrain import load_pretrained, pretrain

    config, extra = RECIPES[recipe]
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        "data.limit=256",
        "train.batch_size=32",
        "train.epochs=1",
        "train.max_steps=4",
        "train.log_every=100",
        "train.progress=false",
        "train.tensorboard=false",
        "train.device=cuda",
        "online_knn.every=0",
        *extra,
    ]
    cfg = load_config(CONFIGS / config, overrides)
    micro, optim = Trainer._micro_step, Trainer._optimizer_step
    monkeypatch.setattr(Trainer, "_micro_step", _under("error", micro))
    monkeypatch.setattr(Trainer, "_optimizer_step", _under("error", optim))
    # kornia (SiT's two views) draws its random parameters on the host and copies them over: those copies
    # are kornia's design, left out of the check (see TwoViewAugment's docstring).
    monkeypatch.setattr(TwoViewAugment, "view", _under("default", TwoViewAugment.view))
    run_dir = pretrain(cfg)  # raises where a step synchronises

    # the GPU run's checkpoint: loads on the CPU, and its run resumes there to the end of the epoch
    model, _, _ = load_pretrained(run_dir)
    assert read_checkpoint(run_dir / "last.pt")["step"] == 4
    assert all(p.device.type == "cpu" for p in model.parameters())
    monkeypatch.undo()
    on_cpu = [o for o in overrides if not o.startswith(("train.device", "train.max"))] + ["train.device=cpu"]
    cpu = load_config(CONFIGS / config, on_cpu)
    pretrain(cpu)
    assert read_checkpoint(run_dir / "last.pt")["step"] == 256 // 32
