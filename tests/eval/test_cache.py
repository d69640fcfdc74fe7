"""Feature cache: keys follow checkpoint content, data, split and pooling; a hit skips the extraction."""

import os

import pytest
import torch

import mimkit.eval.cache as cache
from mimkit.data import DataConfig
from mimkit.data.datasets import ImageDataset
from mimkit.eval.cache import feature_key
from mimkit.eval.features import FeaturePass
from mimkit.models import create_encoder


def cached_features(encoder, data, key, cache_dir, pool):
    """One pooling's features on the CPU in fp32, through the cache in ``cache_dir``."""
    run = FeaturePass(torch.device("cpu"), "fp32", cache_dir=cache_dir)
    return cache.cached_pooled_features(encoder, data, {pool: key}, run)[pool]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "enc.pt"
    torch.save({"model": {"w": torch.ones(3)}}, path)
    return path


def test_key_changes_with_what_changes_the_features(ckpt):
    data = DataConfig(limit=100)
    base = feature_key(ckpt, data, "train", "token")
    assert base == feature_key(
        ckpt, DataConfig(limit=100, num_workers=3), "train", "token"
    )  # irrelevant field
    others = {
        feature_key(ckpt, data, "test", "token"),
        feature_key(ckpt, data, "train", "avg"),
        feature_key(ckpt, DataConfig(limit=200), "train", "token"),
        feature_key(ckpt, data, "train", "token", extra={"seed": 1}),
        feature_key(None, data, "train", "token"),
    }
    assert base not in others and len(others) == 5
    torch.save({"model": {"w": torch.zeros(3)}}, ckpt)  # rewritten in place, same size
    assert feature_key(ckpt, data, "train", "token") != base


def test_same_size_and_mtime_but_other_bytes_still_differs(ckpt):
    data = DataConfig()
    before = feature_key(ckpt, data, "train", "token")
    stat = os.stat(ckpt)
    raw = bytearray(ckpt.read_bytes())
    raw[-1] ^= 1
    ckpt.write_bytes(bytes(raw))
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert feature_key(ckpt, data, "train", "token") != before


def _tiny_encoder_and_data():
    """A one-block ViT on 8x8 grey images and 10 random images of two classes."""
    encoder = create_encoder(
        "vit_tiny_patch4_28", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2
    )
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    data = ImageDataset(torch.arange(10) % 2, ["a", "b"], 1, (8, 8), (0.5,), (0.2,), images=images)
    return encoder, data, images


def test_second_call_loads_from_the_cache(tmp_path, monkeypatch):
    encoder, data, _ = _tiny_encoder_and_data()
    f1, y1 = cached_features(encoder, data, "k1", tmp_path, "avg")
    assert f1.shape == (10, 16) and y1.tolist() == (torch.arange(10) % 2).tolist()
    assert (tmp_path / "features-k1.pt").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(cache, "pooled_batches", boom)
    f2, y2 = cached_features(encoder, data, "k1", tmp_path, "avg")
    assert torch.equal(f1, f2) and torch.equal(y1, y2)
    with pytest.raises(AssertionError, match="extracted again"):
        cached_features(encoder, data, "k2", tmp_path, "avg")


def test_several_poolings_from_one_pass(tmp_path, monkeypatch):
    encoder, data, images = _tiny_encoder_and_data()
    token, _ = cached_features(encoder, data, "t", None, "token")
    avg, _ = cached_features(encoder, data, "a", None, "avg")
    # "avg" cached already: only "token" is extracted, by one forward pass per batch
    cached_features(encoder, data, "a", tmp_path, "avg")
    calls = []
    forward = encoder.forward_features
    monkeypatch.setattr(encoder, "forward_features", lambda x: calls.append(len(x)) or forward(x))
    run = FeaturePass(torch.device("cpu"), "fp32", batch_size=4, cache_dir=tmp_path)
    both = cache.cached_pooled_features(encoder, data, {"token": "t", "avg": "a"}, run)
    assert calls == [4, 4, 2]
    assert torch.allclose(both["token"][0], token) and torch.allclose(both["avg"][0], avg)
    assert both["token"][1].tolist() == (torch.arange(10) % 2).tolist()
    # "token" (class token) and "avg" (token mean) by hand, from the encoder's tokens
    tokens = forward((images.float() / 255 - 0.5) / 0.2)
    assert torch.allclose(token, tokens[:, 0], atol=1e-5)
    assert torch.allclose(avg, tokens[:, 1:].mean(1), atol=1e-5)
    calls.clear()
    cache.cached_pooled_features(encoder, data, {"token": "t", "avg": "a"}, run)
    assert calls == []  # both from the cache now
