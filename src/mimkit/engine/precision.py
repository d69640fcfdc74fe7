"""Which precision a run computes in, chosen from what the device can do (``precision: auto``).

Matrix products decide the speed of a ViT step, and whether bf16 pays depends on the hardware:

- a CPU with native bf16 matrix instructions (x86 AVX-512 bf16 or AMX bf16, Arm's bf16 extension) runs
  a bf16 product several times faster than fp32 (2048^3 on 2 cores of an AMD EPYC with AVX-512 bf16:
  764 against 125 GFLOP/s); without them torch emulates bf16 and the same product is ~60x *slower* than
  fp32 (AVX2-only AMD EPYC: 0.7 against 44-110 GFLOP/s);
- a CUDA GPU of compute capability 8.0+ (A100, H100, RTX 30xx+) runs bf16 natively; older ones (V100, T4)
  run fp16, which needs a gradient scaler because its range is narrow.

So ``auto`` resolves to ``bf16`` autocast where bf16 is native, ``fp16`` autocast plus a gradient scaler
on a CUDA device without bf16, and ``fp32`` otherwise. An explicit ``bf16`` where it is not native is
honoured with one warning that names the cost measured on this machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass

import torch

log = logging.getLogger("mimkit")

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
"""The values ``train.precision`` and ``--precision`` take: ``auto`` chooses what the device runs natively."""
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Capabilities:
    """What a device can compute natively.

    Attributes:
        device_type: ``"cpu"``, ``"cuda"``, ...
        bf16: bf16 matrix products run natively (not emulated).
        fp16: fp16 matrix products run natively (CUDA; on the CPU fp16 is not a fast path).
        detail: what decided it, for the log line (``"AVX-512 bf16"``, ``"CUDA sm_90"``, ``"AVX2 only"``).
    """

    device_type: str
    bf16: bool
    fp16: bool
    detail: str


@dataclass(frozen=True)
class Resolved:
    """A precision request resolved for a device.

    Attributes:
        precision: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        requested: what the config asked for (``"auto"`` or one of the above).
        reason: one line saying why (for the run's log).
        native: False when an explicit ``bf16``/``fp16`` runs emulated on this device (slow).
    """

    precision: str
    requested: str
    reason: str
    native: bool = True

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def needs_scaler(self) -> bool:
        """fp16 has 5 exponent bits: gradients underflow without loss scaling."""
        return self.precision == "fp16"


# bf16 matrix instructions as torch's CPU probe and /proc/cpuinfo name them, fastest first
_CPU_BF16 = (("amx_bf16", "AMX bf16"), ("avx512_bf16", "AVX-512 bf16"), ("bf16", "Arm bf16"))


def _cpu_flags() -> set[str]:
    """The CPU's feature flags: torch's own probe where this torch has it, else /proc/cpuinfo."""
    probe = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
    if probe is not None:
        try:
            return {name for name, on in probe().items() if on is True}
        except Exception:  # a private API: any failure falls back to the OS's view
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, Arm
                    return set(value.split())
    except OSError:
        pass
    return set()


# oneDNN (torch's CPU bf16 matrix products) can be capped below its bf16 kernels by an environment variable
_ONEDNN_CAPS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_capabilities(flags: set[str] | None = None, environ: dict[str, str] | None = None) -> Capabilities:
    """Native bf16 on this CPU? ``flags`` and ``environ`` override the probe and ``os.environ`` (tests).

    The CPU needs bf16 matrix instructions, and oneDNN must be allowed to use them: ``ONEDNN_MAX_CPU_ISA``
    (or ``DNNL_MAX_CPU_ISA``) set to an ISA without them, e.g. ``AVX2``, makes bf16 emulated again.
    """
    flags = _cpu_flags() if flags is None else flags
    environ = os.environ if environ is None else environ
    cap = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    for flag, label in _CPU_BF16:
        if flag in flags and cap in _ONEDNN_CAPS_WITHOUT_BF16:
            return Capabilities("cpu", bf16=False, fp16=False, detail=f"{label} capped by oneDNN ISA {cap}")
        if flag in flags:
            return Capabilities("cpu", bf16=True, fp16=False, detail=label)
    best = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    return Capabilities("cpu", bf16=False, fp16=False, detail=f"{best} without bf16" if best else "no bf16")


def device_capabilities(device: torch.device | str) -> Capabilities:
    """What ``device`` runs natively (CUDA: from its compute capability; CPU: from its flags)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return Capabilities(
            "cuda", bf16=major >= 8, fp16=(major, minor) >= (5, 3), detail=f"CUDA sm_{major}{minor}"
        )
    if device.type == "cpu":
        return cpu_capabilities()
    return Capabilities(device.type, bf16=False, fp16=False, detail=device.type)


def choose_precision(requested: str, caps: Capabilities) -> Resolved:
    """The precision for ``requested`` on a device with ``caps`` (a pure function of both).

    Raises:
        ValueError: ``requested`` is not one of :data:`PRECISIONS`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    where = f"{caps.device_type} ({caps.detail})"
    if requested == "auto":
        if caps.bf16:
            return Resolved("bf16", requested, f"auto -> bf16 autocast: native bf16 on {where}")
        if caps.fp16 and caps.device_type == "cuda":
            return Resolved("fp16", requested, f"auto -> fp16 autocast + gradient scaler: no bf16 on {where}")
        return Resolved("fp32", requested, f"auto -> fp32: no native bf16 on {where}")
    if requested == "fp32":
        return Resolved("fp32", requested, f"fp32 on {where}")
    native = caps.bf16 if requested == "bf16" else caps.fp16
    note = "" if native else ", NOT native here (emulated, slow)"
    return Resolved(requested, requested, f"{requested} autocast on {where}{note}", native=native)


def matmul_gflops(
    dtype: torch.dtype, size: int = 512, device: torch.device | str = "cpu", reps: int = 3
) -> float:
    """The rate of a ``size``^3 matrix product in ``dtype`` on ``device``, in GFLOP/s (best of ``reps``)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / max(best, 1e-9) / 1e9


def resolve_precision(
    requested: str,
    device: torch.device | str,
    caps: Capabilities | None = None,
    announce: bool = True,
) -> Resolved:
    """:func:`choose_precision` for a real device; logs the choice, warns once if it is emulated.

    The warning measures a small matrix product in the requested dtype and in fp32 on this device, so it
    states the slowdown this machine would see, not a number from another one. ``announce=False`` (the
    other ranks of a distributed run) resolves silently.
    """
    device = torch.device(device)
    caps = caps or device_capabilities(device)
    resolved = choose_precision(requested, caps)
    if announce:
        log.info("precision: %s", resolved.reason)
    if announce and not resolved.native:
        slow = matmul_gflops(resolved.dtype, device=device)
        fast = matmul_gflops(torch.float32, device=device)
        warnings.warn(
            f"precision {requested} is not native on this {device.type} ({caps.detail}): "
            f"a 512^3 matrix product runs at "
            f"{slow:.1f} GFLOP/s against {fast:.1f} in fp32 ({fast / max(slow, 1e-9):.0f}x slower); "
            "use precision auto or fp32",
            RuntimeWarning,
            stacklevel=2,
        )
    return resolved


def auto_to_native(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> this device's native choice (silently); any other precision is returned as given."""
    if precision != "auto":
        return precision
    return choose_precision("auto", device_capabilities(device)).precision


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=DTYPES[precision])


def grad_scaler(resolved: Resolved, device_type: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, None otherwise."""
    if not resolved.needs_scaler:
        return None
    return torch.amp.GradScaler(device_type)
