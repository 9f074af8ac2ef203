"""The kernel build, checked without a GPU (runs in CI): every arch compiles clean under the
SM12x budget (trap 8), both cache dtypes build (trap 2), the BF16 kernels hold no FP8 types
(trap 1), and the sm_120a FP8 kernels multiply in native e4m3 (QMMA) with no per-element
FP8-to-half conversion."""

from __future__ import annotations

import re

import pytest

from mla_plugin import build

DECODE = "mla_decode_kernel"
ELEM = {"0": "bf16", "1": "fp16", "2": "fp8"}


def _dtypes(kernel: str) -> tuple[str, str]:
    """(kv, q) element types from a mangled DecodeConfig<Elem KV, Elem Q, Elem OUT, rows>."""
    m = re.search(r"DecodeConfigILNS_4ElemE(\d)ELS\d_(\d)E", kernel)
    assert m, kernel
    return ELEM[m.group(1)], ELEM[m.group(2)]


@pytest.fixture(scope="module", params=build.SUPPORTED_ARCHS)
def ptxas(request):
    return request.param, build.ptxas_report(request.param)


def test_trap08_no_spills_no_stack_frame_within_smem_budget(ptxas):
    arch, records = ptxas
    decode = [r for r in records if DECODE in r.kernel]
    # 2 row tilings x (bf16, fp16, fp8+bf16 q, fp8+fp16 q, fp8 q -> bf16 / fp16 out)
    assert len(decode) == 12, f"{arch}: expected 12 decode kernels, found {len(decode)}"
    assert build.resource_problems(records) == []


def test_trap02_both_cache_dtypes_are_built(ptxas):
    arch, records = ptxas
    kinds = {_dtypes(r.kernel)[0] for r in records if DECODE in r.kernel}
    assert kinds == {"bf16", "fp16", "fp8"}


def test_parse_ptxas_reads_spills_and_stack():
    text = """ptxas info    : Compiling entry function '_Z1kv' for 'sm_120a'
ptxas info    : Function properties for _Z1kv
    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 24 bytes cumulative stack size, 2048 bytes smem"""
    (r,) = build.parse_ptxas(text)
    assert (r.arch, r.registers, r.stack_bytes, r.spill_stores, r.spill_loads, r.smem_bytes) == (
        "sm_120a", 255, 24, 8, 12, 2048)
    assert len(build.resource_problems([r])) == 2


def _count(sass: str, pattern: str) -> int:
    return len(re.findall(pattern, sass))


def test_fp8_kernels_use_native_e4m3_mma_without_unpacking_on_sm120a():
    kernels = {k: v for src in ("launch_fp8_q16.cu", "launch_fp8_q8.cu")
               for k, v in build.sass_by_kernel("12.0a", src).items() if DECODE in k}
    assert len(kernels) == 8  # q bf16 / fp16 / e4m3 (-> bf16 or fp16 out), 2 row tilings each
    for name, sass in kernels.items():
        # S = Q K^T: 9 panels x 2 k-steps x S_NTILES(2) in the panel loop body (4 per panel),
        # O = P V: at least 8 per k-step: both products on QMMA.
        assert _count(sass, r"QMMA\.16832\.F32\.E4M3\.E4M3") >= 12, name
        assert _count(sass, r"HMMA") == 0, f"{name}: 16-bit MMA in the FP8 kernel"
        assert _count(sass, r"F2FP\.(?:F16|BF16)\.E[45]M[23]|E4M3\.UNPACK|F2F\.F16\.E4M3") == 0, (
            f"{name}: FP8 -> 16-bit conversions (the product would not be native FP8)")


def test_trap01_bf16_kernels_hold_no_fp8_types_on_sm120a():
    kernels = {k: v for k, v in build.sass_by_kernel("12.0a", "launch_bf16.cu").items() if DECODE in k}
    assert len(kernels) == 2
    for name, sass in kernels.items():
        assert _count(sass, r"HMMA\.16816\.F32\.BF16") >= 8, name
        assert _count(sass, r"QMMA|E4M3|E5M2") == 0, f"{name}: FP8 element types in the BF16 path"


def test_parse_archs_accepts_the_documented_spellings_and_refuses_others():
    assert build.parse_archs("12.0a,12.1a") == ["12.0a", "12.1a"]
    assert build.parse_archs("sm_90a") == ["9.0a"]
    with pytest.raises(ValueError, match="8.9a.*not supported|not supported"):
        build.parse_archs("8.9")
    with pytest.raises(ValueError, match="expected e.g."):
        build.parse_archs("blackwell")
