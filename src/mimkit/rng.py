"""Per-sample randomness keyed by (seed, epoch, sample index), so that a run does not depend on how many
processes ran it.

The trainer wraps each micro-batch in :func:`use` with the batch's sample keys; inside it :func:`rand`
draws every row ``n`` of a ``[N, ...]`` tensor from a counter-based hash of sample ``n``'s key, the call's
position in the micro-step (the k-th draw of the step) and the element's position, instead of from the
global RNG. A sample then gets the same masks and crops whether it sits in a batch of 256 on one process
or of 128 on each of two, and a resumed run draws what the uninterrupted one would have. Outside
:func:`use` (evaluation, pictures, tests), :func:`rand` is ``torch.rand`` and :func:`randn` ``torch.randn``.

The keys travel in a context variable rather than as arguments: the masks and crops are drawn deep inside
methods and transforms that must not know about the trainer, and the context is the one seam that keeps
them trainer-blind (it lives at the bottom of the package so that data/ and masking/ may use it).

The hash is SplitMix64's finaliser (Steele et al., 2014) on int64 tensors, wrapping on overflow as two's
complement arithmetic does; the uniform value is the top 24 bits over 2^24, exact in float32.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64: ``x + golden``, then the finaliser; int64 in, int64 out (the same bits as uint64)."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def sample_keys(seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """int64 ``[N]``: one key per sample index of ``epoch`` of a run seeded with ``seed``."""
    base = mix(mix(torch.tensor([seed], dtype=torch.int64)) + epoch)
    return mix(base + indices.to(torch.int64).cpu())


class _Draws:
    def __init__(self, keys: torch.Tensor):
        self.keys = keys
        self.calls = 0
        self.on_device: dict[torch.device, torch.Tensor] = {}

    def keys_on(self, device: torch.device) -> torch.Tensor:
        if device not in self.on_device:
            self.on_device[device] = self.keys.to(device)
        return self.on_device[device]


_current: contextvars.ContextVar[_Draws | None] = contextvars.ContextVar("mimkit_keyed", default=None)


@contextlib.contextmanager
def use(keys: torch.Tensor | None) -> Iterator[None]:
    """Draw :func:`rand` from ``keys`` (int64 ``[N]``, :func:`sample_keys`) inside the block; None: off."""
    token = _current.set(_Draws(keys) if keys is not None else None)
    try:
        yield
    finally:
        _current.reset(token)


def keyed_uniform(keys: torch.Tensor, shape: Sequence[int], stream: int) -> torch.Tensor:
    """float32 ``[N, *shape]`` in [0, 1): row ``n`` from ``keys[n]``, the ``stream`` and the element."""
    count = 1
    for s in shape:
        count *= int(s)
    counter = torch.arange(count, dtype=torch.int64, device=keys.device)
    stream_offset = torch.tensor(stream, dtype=torch.int64, device=keys.device) * _signed(0xD1B54A32D192ED03)
    per_element = mix(counter + stream_offset)  # int64 arithmetic wraps, as the hash wants
    bits = mix(keys[:, None] ^ per_element[None, :])
    return (_shr(bits, 40).to(torch.float32) * (1.0 / (1 << 24))).view(len(keys), *shape)


def rand(
    *shape: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``torch.rand(*shape)``, drawn per sample from the current keys inside :func:`use` (when
    ``shape[0]`` is the batch's size and no ``generator`` is given)."""
    draws = _current.get()
    if draws is None or generator is not None or not shape or shape[0] != len(draws.keys):
        return torch.rand(*shape, device=device, generator=generator)
    device = torch.device(device) if device is not None else torch.device("cpu")
    stream, draws.calls = draws.calls, draws.calls + 1
    return keyed_uniform(draws.keys_on(device), shape[1:], stream)


def randn(
    *shape: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``torch.randn(*shape)``; inside :func:`use`, row ``n`` comes from a generator seeded with sample
    ``n``'s key and the call's stream (large draws such as a noise image: one generator per sample is ~20x
    cheaper than hashing every element, and as independent of the batch)."""
    draws = _current.get()
    if draws is None or generator is not None or not shape or shape[0] != len(draws.keys):
        return torch.randn(*shape, device=device, generator=generator)
    device = torch.device(device) if device is not None else torch.device("cpu")
    stream, draws.calls = draws.calls, draws.calls + 1
    seeds = mix(draws.keys ^ mix(torch.tensor([stream], dtype=torch.int64)))
    out = torch.empty(shape, device=device)
    for row, seed in zip(out, seeds.tolist(), strict=True):
        row.normal_(generator=torch.Generator(device).manual_seed(seed & _MASK64))
    return out


def active() -> bool:
    """Whether draws are keyed here (inside :func:`use` with keys)."""
    return _current.get() is not None
