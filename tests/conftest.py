"""Shared fixtures: a tiny MAE pretraining run on a few hundred Fashion-MNIST images."""

import os

import pytest

from mimkit.cli import main

FMNIST = "/usr/share/datasets/fashion-mnist"
# MAE's model shrunk to seconds: a 2-block 32-wide ViT, a 1-block 16-wide decoder
TINY_MODEL = [
    "encoder.embed_dim=32",
    "encoder.depth=2",
    "encoder.num_heads=2",
    "method.decoder_dim=16",
    "method.decoder_depth=1",
    "method.decoder_heads=2",
]
# MAE's Fashion-MNIST recipe shrunk to seconds: the tiny model, one epoch of 256 images
TINY_MAE = [
    *TINY_MODEL,
    "data.limit=256",
    "train.batch_size=64",
    "train.epochs=1",
    "train.progress=false",
    "train.tensorboard=false",
]


@pytest.fixture(scope="session")
def tiny_mae_overrides():
    """The overrides above, for test modules that build their own variant of the tiny run."""
    return list(TINY_MAE)


@pytest.fixture(scope="module")
def tiny_mae_run(tmp_path_factory):
    """A finished pretraining run directory (one per test module: evaluations write into it)."""
    if not os.path.isdir(FMNIST):
        pytest.skip("dataset-fashion-mnist is not installed")
    out = tmp_path_factory.mktemp("run")
    assert (
        main(["pretrain", "--config", "configs/mae_fashion_mnist.yaml", f"output_dir={out}", *TINY_MAE]) == 0
    )
    return out
