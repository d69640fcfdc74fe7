import pytest
import torch

from mimkit.data import ImageDataset, build_loader


def id_dataset(n: int) -> ImageDataset:
    """In-memory images whose label is their index, so a batch tells which items it holds."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageDataset(torch.arange(n), [], 1, (2, 2), (0.5,), (0.5,), images=images)


def epoch_ids(loader) -> list[int]:
    return [i for _, labels in loader for i in labels.tolist()]


def test_batches_are_slices_of_the_dataset():
    ds = id_dataset(10)
    images, labels = next(iter(build_loader(ds, batch_size=4, seed=3)))
    assert images.shape == (4, 1, 2, 2) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images, ds.images[labels])


def test_order_is_deterministic_per_seed_and_epoch():
    ds = id_dataset(100)
    a, b = build_loader(ds, 10, seed=7), build_loader(ds, 10, seed=7)
    first = epoch_ids(a)
    assert first == epoch_ids(b) and sorted(first) == list(range(100))  # a permutation
    assert epoch_ids(a) == first  # the same epoch again
    a.set_epoch(1)
    second = epoch_ids(a)
    assert second != first and sorted(second) == list(range(100))
    b.set_epoch(1)
    assert epoch_ids(b) == second
    assert epoch_ids(build_loader(ds, 10, seed=8)) != first
    assert epoch_ids(build_loader(ds, 10, shuffle=False)) == list(range(100))


def test_len_and_drop_last():
    ds = id_dataset(10)
    loader = build_loader(ds, 4)
    assert len(loader) == 2 and len(epoch_ids(loader)) == 8
    loader = build_loader(ds, 4, drop_last=False)
    assert len(loader) == 3 and sorted(epoch_ids(loader)) == list(range(10))
    with pytest.raises(ValueError, match="fewer than batch_size x world_size"):
        build_loader(ds, 11)


def test_rank_shards_are_disjoint_and_cover_the_epoch():
    ds = id_dataset(30)
    shards = []
    for rank in range(3):
        loader = build_loader(ds, 2, seed=1, rank=rank, world_size=3)
        loader.set_epoch(4)
        assert len(loader) == 5
        shards.append(epoch_ids(loader))
    assert sorted(sum(shards, [])) == list(range(30))
    # each rank takes every 3rd index of the one permutation (DistributedSampler's layout)
    single = build_loader(ds, 30, seed=1)
    single.set_epoch(4)
    order = epoch_ids(single)
    assert all(shards[r] == order[r::3] for r in range(3))


def test_uneven_shards_are_padded_without_drop_last():
    ds = id_dataset(31)
    shards = [epoch_ids(build_loader(ds, 4, drop_last=False, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [11, 11, 11]  # ceil(31 / 3) each
    assert set(sum(shards, [])) == set(range(31))


def test_set_start_batch_gives_the_tail_of_the_epoch():
    ds = id_dataset(50)
    full = build_loader(ds, 5, seed=2)
    full.set_epoch(3)
    batches = [labels.tolist() for _, labels in full]
    resumed = build_loader(ds, 5, seed=2)  # a fresh loader, as after a restart
    resumed.set_epoch(3)
    resumed.set_start_batch(4)
    assert [labels.tolist() for _, labels in resumed] == batches[4:]
    assert [labels.tolist() for _, labels in resumed] == batches  # only the next pass is shortened
    resumed.set_start_batch(len(resumed))
    assert list(resumed) == []
    with pytest.raises(ValueError, match="start batch"):
        resumed.set_start_batch(len(resumed) + 1)


def test_global_rng_is_untouched():
    ds = id_dataset(40)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    loader = build_loader(ds, 8, seed=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        list(loader)
    assert torch.equal(torch.get_rng_state(), state)


def test_global_rng_is_untouched_by_the_decoding_path(tmp_path):
    from PIL import Image

    from mimkit.data import DataConfig, build_dataset

    for i in range(6):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i}.png")
    ds = build_dataset(DataConfig(source="folder", root=str(tmp_path), in_memory=False))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert len(epoch_ids(build_loader(ds, 3, seed=0, num_workers=0))) == 6
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_loader_arguments():
    ds = id_dataset(8)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(ds, 0)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        build_loader(ds, 2, rank=2, world_size=2)


def test_pretraining_pins_its_batches_for_a_gpu_only(monkeypatch, tmp_path):
    """The pretraining loader pins host batches when the run's device is CUDA (asynchronous copies),
    and not on the CPU (pinning needs an accelerator there is none of)."""
    import mimkit.pretrain as pretrain
    from mimkit.engine import dist
    from mimkit.engine.config import load_config

    class NoAugment:
        def to(self, device):
            return self

    monkeypatch.setattr(pretrain, "Trainer", lambda method, loader, *args, **kwargs: loader)
    monkeypatch.setattr(pretrain, "build_augment", lambda data_cfg, dataset: NoAugment())
    cfg = load_config(None, ["train.batch_size=4"])
    for device, pinned in (("cpu", False), ("cuda", True)):
        monkeypatch.setattr(dist, "setup", lambda _, d=device: dist.DistEnv(device=torch.device(d)))
        loader = pretrain.build_trainer(cfg, id_dataset(8), None, tmp_path)
        assert loader.pin_memory is pinned
