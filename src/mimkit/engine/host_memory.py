"""Host memory for CPU runs: glibc told to keep freed memory for reuse instead of returning it to the OS.

A training step frees its activations and allocates them again on the next step. glibc's defaults hand
large freed blocks back to the kernel (``munmap`` of blocks served by ``mmap``, trimming of the heap's top),
so every step page-faults its activations in again. Measured with ``benchmarks/host_memory.py`` (ViT-Tiny,
28x28, batch 256, each method's Fashion-MNIST recipe, 2 cores of an AMD EPYC Zen 5 with AVX-512 bf16, torch
2.13): MAE's bf16 step page-faulted 55,000 times under glibc's defaults and not once with freed memory
kept, and took 0.89x the time (SimMIM 0.80x, GMML 0.77x, SiT 0.92x; fp32: MAE 0.89x, SimMIM 0.77x), with
the same peak resident memory (within 2%). PyTorch's CPU performance guides reach the same end by
preloading jemalloc or tcmalloc; ``mallopt`` does it from inside the process, with the allocator already
loaded.

Kept: up to 1 GiB of free heap top (``M_TRIM_THRESHOLD``), and blocks of up to 32 MiB (glibc's largest
``M_MMAP_THRESHOLD``) served from the heap rather than by ``mmap``. Larger blocks are still mapped and
returned on free (SiT's two-view activations at batch 256: 370,000 faults per step remain), so that a
large buffer freed mid-run (a dataset, a feature bank) goes back to the OS; ``M_MMAP_MAX=0`` would keep
those too (measured: SiT's faults gone, its step 2-16% shorter in two runs) at the price of memory that
stays with the process. Set ``MIMKIT_KEEP_FREED_MEMORY=0`` to leave glibc's defaults (a process that embeds
mimkit and wants freed memory back at once).
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_TRIM_KEEP = 1 << 30
_MMAP_ABOVE = 1 << 25  # glibc refuses more than 32 MiB on 64-bit systems
_state: bool | None = None  # once per process: mallopt's settings hold for the process's lifetime


def keep_freed_memory() -> bool:
    """Ask glibc (once per process) to keep freed memory for reuse; True when it is being kept.

    False where the C library is not glibc (macOS, musl) or ``MIMKIT_KEEP_FREED_MEMORY=0`` is set.
    """
    global _state
    if _state is None:
        _state = False
        if os.environ.get("MIMKIT_KEEP_FREED_MEMORY", "1").strip() not in ("0", "false", "no"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _state = bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_KEEP)) and bool(
                    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE)
                )
            except (OSError, AttributeError):  # not glibc: _state stays False
                pass
    return _state
