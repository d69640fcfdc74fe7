"""mimkit.rng: SplitMix64 on int64 tensors against a plain-Python reference, per-sample draws."""

import torch

from mimkit import rng

MASK = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """The reference finaliser on Python ints (Steele, Lea and Flood, 2014), masked to 64 bits."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def test_mix_equals_the_reference_bit_for_bit():
    values = [0, 1, 2, 12345, (1 << 63) - 1, 1 << 62, 0xDEADBEEF]
    ours = rng.mix(torch.tensor(values, dtype=torch.int64)).tolist()
    assert [v & MASK for v in ours] == [splitmix64(v) for v in values]
    # negative int64 values are the same bits as large uint64 ones
    assert rng.mix(torch.tensor([-1])).item() & MASK == splitmix64(MASK)


def test_a_samples_draw_does_not_depend_on_its_batch():
    keys = rng.sample_keys(0, 3, torch.tensor([5, 17, 99, 4]))
    together = rng.keyed_uniform(keys, (6,), stream=2)
    alone = rng.keyed_uniform(keys[1:2], (6,), stream=2)
    assert torch.equal(together[1:2], alone)
    assert not torch.equal(together[0], together[1])  # other samples, other draws
    assert not torch.equal(rng.keyed_uniform(keys, (6,), stream=3), together)  # other streams too
    assert not torch.equal(rng.sample_keys(0, 4, torch.tensor([5])), keys[:1])  # and other epochs


def test_uniform_range_and_moments():
    u = rng.keyed_uniform(rng.sample_keys(1, 0, torch.arange(1000)), (100,), stream=0)
    assert u.dtype == torch.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    # the 100 draws of a sample are not correlated with the next sample's
    corr = torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]
    assert abs(corr.item()) < 0.01


def test_rand_is_keyed_inside_use_only():
    keys = rng.sample_keys(0, 0, torch.arange(3))
    with rng.use(keys):
        assert rng.active()
        first, second = rng.rand(3, 4), rng.rand(3, 4)
        other = rng.rand(5, 4)  # not the batch's size: the global RNG
    assert torch.equal(first, rng.keyed_uniform(keys, (4,), 0))
    assert torch.equal(second, rng.keyed_uniform(keys, (4,), 1))
    assert other.shape == (5, 4) and not rng.active()
    torch.manual_seed(7)
    expected = torch.rand(3, 4)
    torch.manual_seed(7)
    assert torch.equal(rng.rand(3, 4), expected)


def test_randn_rows_come_from_their_samples_keys():
    keys = rng.sample_keys(2, 1, torch.arange(2000))
    with rng.use(keys):
        z = rng.randn(2000, 50)
        again = rng.randn(2000, 50)  # the next call: another stream
    assert torch.isfinite(z).all() and not torch.equal(z, again)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    # the fourth moment of a standard normal is 3 (a uniform or a bad transform is far from it)
    assert abs(z.pow(4).mean().item() - 3) < 0.1
    # rows are not correlated with the next sample's row
    assert abs(torch.corrcoef(torch.stack([z[:-1].flatten(), z[1:].flatten()]))[0, 1].item()) < 0.01
    with rng.use(keys[5:7]):
        assert torch.equal(rng.randn(2, 50), z[5:7])  # a sample's noise does not depend on its batch
    torch.manual_seed(3)
    expected = torch.randn(4, 2)
    torch.manual_seed(3)
    assert torch.equal(rng.randn(4, 2), expected)  # outside use: torch.randn
