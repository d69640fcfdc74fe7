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

Kept: up to 1 GiB of free heap top (``M_TRIM_THRESHOLD``), and every block served from the heap rather
than by ``mmap`` (``M_MMAP_THRESHOLD`` 32 MiB, glibc's largest, and ``M_MMAP_MAX`` 0): glibc returns a
mapped block to the OS when it is freed, so blocks over 32 MiB (SiT's two-view activations at batch 256,
any larger model or batch) page-faulted in again every step. Measured with ``benchmarks/host_memory.py``
(same machine, bf16, 2026-12-03; ``--mapped-large-blocks`` is the setting before): SiT's step 0.72x and
0.81x the time (two runs) of freed memory kept with large blocks mapped, 422,000 page faults per step -> 1,
peak RSS +1-3%; MAE, SimMIM and GMML unchanged (they had no block over 32 MiB). The price: a large buffer
freed mid-run (a dataset, a feature bank) stays with the process for reuse instead of going back to the OS,
except what is freed at the top of the heap beyond 1 GiB. Set ``MIMKIT_KEEP_FREED_MEMORY=0`` to leave
glibc's defaults (a process that embeds mimkit and wants freed memory back at once).
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # <malloc.h>
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
                _state = all(
                    libc.mallopt(option, value)
                    for option, value in (
                        (_M_TRIM_THRESHOLD, _TRIM_KEEP),
                        (_M_MMAP_THRESHOLD, _MMAP_ABOVE),
                        (_M_MMAP_MAX, 0),
                    )
                )
            except (OSError, AttributeError):  # not glibc: _state stays False
                pass
    return _state
