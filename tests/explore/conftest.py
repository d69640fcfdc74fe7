"""One tiny MAE run and its explorer, shared by the explorer's API and browser tests."""

import os

import pytest
import torch

from mimkit.cli import main

FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="package")
def explore_run(tmp_path_factory, tiny_mae_overrides):
    """A finished tiny MAE pretraining run (2 blocks, 2 heads, 7x7 patches of 4 px)."""
    if not os.path.isdir(FMNIST):
        pytest.skip("dataset-fashion-mnist is not installed")
    out = tmp_path_factory.mktemp("explore_run")
    args = [
        "pretrain",
        "--config",
        "configs/mae_fashion_mnist.yaml",
        f"output_dir={out}",
        *tiny_mae_overrides,
    ]
    assert main([*args, "data.limit=64", "train.batch_size=32"]) == 0
    return out


@pytest.fixture(scope="package")
def explorer(explore_run):
    pytest.importorskip("starlette")
    from mimkit.explore import ExploreOptions, Explorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save on a busy machine
    try:
        yield Explorer(str(explore_run), ExploreOptions(train_limit=48, test_limit=16, use_cache=False))
    finally:
        torch.set_num_threads(threads)
