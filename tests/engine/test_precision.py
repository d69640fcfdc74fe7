"""precision: auto resolves from what the device can do; explicit emulated bf16 warns once; fp16 scales."""

import logging

import pytest
import torch

from mimkit.engine.precision import (
    Capabilities,
    autocast,
    choose_precision,
    cpu_capabilities,
    grad_scaler,
    resolve_precision,
)

# (device type, native bf16, native fp16) -> what auto must pick
AUTO = [
    (("cuda", True, True), "bf16"),  # A100 / H100
    (("cuda", False, True), "fp16"),  # V100 / T4: fp16 + scaler is their fast path
    (("cuda", False, False), "fp32"),  # pre-Pascal
    (("cpu", True, False), "bf16"),  # AVX-512 bf16 / AMX
    (("cpu", False, False), "fp32"),  # AVX2 only: bf16 is emulated, ~60x slower than fp32
    (("cpu", False, True), "fp32"),  # fp16 autocast is never the CPU's fast path
    (("mps", False, False), "fp32"),
]


@pytest.mark.parametrize("caps, expected", AUTO)
def test_auto_follows_the_devices_native_precision(caps, expected):
    resolved = choose_precision("auto", Capabilities(*caps, detail="stub"))
    assert resolved.precision == expected
    assert resolved.native and resolved.requested == "auto"
    assert resolved.needs_scaler == (expected == "fp16")
    assert resolved.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[expected]


@pytest.mark.parametrize("requested", ["bf16", "fp16", "fp32"])
def test_an_explicit_choice_is_honoured_and_flagged_when_emulated(requested):
    without = choose_precision(requested, Capabilities("cpu", False, False, "AVX2 without bf16"))
    assert without.precision == requested
    assert without.native == (requested == "fp32")
    assert ("NOT native" in without.reason) == (requested != "fp32")
    with_all = choose_precision(requested, Capabilities("cuda", True, True, "CUDA sm_90"))
    assert with_all.native and with_all.precision == requested


def test_an_unknown_precision_is_one_line_listing_the_valid_ones():
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        choose_precision("fp8", Capabilities("cpu", True, False, "x"))


def test_cpu_flags_decide_native_bf16():
    assert cpu_capabilities({"avx2", "avx512f", "avx512_bf16"}, environ={}) == Capabilities(
        "cpu", True, False, "AVX-512 bf16"
    )
    assert cpu_capabilities({"avx2", "amx_tile", "amx_bf16", "avx512_bf16"}).detail == "AMX bf16"
    assert cpu_capabilities({"fp", "asimd", "bf16"}).bf16  # Arm (Graviton 3, ...)
    assert not cpu_capabilities({"avx2", "fma"}).bf16
    assert cpu_capabilities({"avx2", "fma"}).detail == "AVX2 without bf16"
    assert not cpu_capabilities({"avx2", "avx512f"}).bf16  # AVX-512 alone (Skylake) emulates bf16
    # oneDNN capped below its bf16 kernels: bf16 is emulated however capable the CPU
    capped = cpu_capabilities({"avx512_bf16"}, environ={"ONEDNN_MAX_CPU_ISA": "avx2"})
    assert not capped.bf16 and capped.detail == "AVX-512 bf16 capped by oneDNN ISA AVX2"
    assert cpu_capabilities({"amx_bf16"}, environ={"DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX"}).bf16


def test_emulated_bf16_warns_once_with_this_machines_measured_cost(caplog):
    stub = Capabilities("cpu", False, False, "AVX2 without bf16")
    with caplog.at_level("INFO", logger="mimkit"), pytest.warns(RuntimeWarning) as record:
        resolved = resolve_precision("bf16", "cpu", caps=stub)
    assert resolved.precision == "bf16" and not resolved.native
    assert len(record) == 1
    message = str(record[0].message)
    assert "not native" in message and "AVX2 without bf16" in message
    assert "GFLOP/s" in message and "x slower" in message  # numbers measured here, not quoted
    assert any("precision:" in r.getMessage() for r in caplog.records)


def test_native_or_fp32_resolves_without_a_warning(recwarn, caplog):
    with caplog.at_level(logging.INFO, logger="mimkit"):
        resolve_precision("auto", "cpu", caps=Capabilities("cpu", False, False, "AVX2 without bf16"))
        resolve_precision("bf16", "cpu", caps=Capabilities("cpu", True, False, "AVX-512 bf16"))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert [r.getMessage() for r in caplog.records] == [
        "precision: auto -> fp32: no native bf16 on cpu (AVX2 without bf16)",
        "precision: bf16 autocast on cpu (AVX-512 bf16)",
    ]


def test_autocast_and_scaler_per_precision():
    x = torch.randn(4, 4)
    with autocast("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32
    fp16 = choose_precision("fp16", Capabilities("cuda", True, True, "x"))
    assert grad_scaler(fp16, "cpu") is not None
    assert grad_scaler(choose_precision("bf16", Capabilities("cuda", True, True, "x")), "cpu") is None
