"""Output comparison and tolerances of the bench (no GPU needed)."""

import math

import pytest
import torch

from mla_plugin.bench import check as bench_check
from mla_plugin.bench.check import Tolerance, compare


def _pair(seed=0, rows=4, heads=16):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(rows, heads, 512, generator=g) * 0.1
    lse = torch.randn(rows, heads, generator=g) + 8.0
    return out, lse


def test_identical_outputs_pass():
    out, lse = _pair()
    c = compare(out.clone(), lse.clone(), out, lse, bench_check.BF16_TOLERANCE, "reference")
    assert c.ok and c.finite
    assert c.max_abs == 0.0 and c.mean_rel == 0.0 and c.lse_max_abs == 0.0


def test_bf16_rounding_passes_bf16_tolerance():
    out, lse = _pair()
    c = compare(out.to(torch.bfloat16), lse, out, lse, bench_check.BF16_TOLERANCE, "reference")
    assert c.ok
    assert 0 < c.mean_rel < 5e-3


def test_all_zero_output_fails_even_when_values_are_small():
    out, lse = _pair()
    out = out * 0.03  # every element under the 2e-2 max-abs bound: only the mean relative error catches zeros
    assert out.abs().max() < 2e-2
    c = compare(torch.zeros_like(out), lse, out, lse, bench_check.BF16_TOLERANCE, "reference")
    assert not c.ok
    assert c.mean_rel == pytest.approx(1.0)


def test_nan_fails():
    out, lse = _pair()
    bad = out.clone()
    bad[1, 2, 3] = float("nan")
    c = compare(bad, lse, out, lse, bench_check.FP8_TOLERANCE, "TRITON_MLA")
    assert not c.ok and not c.finite
    bad_lse = lse.clone()
    bad_lse[0, 0] = float("inf")
    assert not compare(out, bad_lse, out, lse, bench_check.FP8_TOLERANCE, "reference").ok


def test_wrong_lse_fails():
    out, lse = _pair()
    c = compare(out, lse * math.log2(math.e), out, lse, bench_check.BF16_TOLERANCE, "reference")  # log2, not ln
    assert not c.ok and c.lse_max_abs > 1


def test_one_large_error_fails_max_abs():
    out, lse = _pair()
    bad = out.clone()
    bad[0, 0, 0] += 0.5
    c = compare(bad, lse, out, lse, bench_check.BF16_TOLERANCE, "reference")
    assert not c.ok and c.max_abs == pytest.approx(0.5, rel=1e-3)
    assert c.mean_rel < bench_check.BF16_TOLERANCE.mean_rel  # caught by the max, not the mean


def test_max_abs_bound_scales_with_large_outputs():
    out, lse = _pair()
    big = out * 100
    c = compare(big * 1.001, lse, big, lse, Tolerance(2e-2, 1e-2, 1e-2), "reference")
    assert c.max_abs > 2e-2 and c.ok  # 0.1% off on values of tens


def test_bf16_stored_lse_gets_its_rounding_allowance():
    out, lse = _pair()
    stored = lse.to(torch.bfloat16)  # TRITON_MLA's lse is in q's dtype
    assert (stored.float() - lse).abs().max() > bench_check.BF16_TOLERANCE.lse_max_abs
    assert compare(out, lse, out, stored, bench_check.BF16_TOLERANCE, "TRITON_MLA").ok
    assert compare(out, stored, out, lse, bench_check.BF16_TOLERANCE, "reference").ok
    assert not compare(out, lse, out, stored.float(), bench_check.BF16_TOLERANCE, "TRITON_MLA").ok


def test_fp8_tolerance_is_looser_and_cross_tolerance_sums():
    bf16, fp8 = bench_check.ours_tolerance("bf16"), bench_check.ours_tolerance("fp8")
    assert fp8.max_abs > bf16.max_abs and fp8.mean_rel > bf16.mean_rel and fp8.lse_max_abs > bf16.lse_max_abs
    assert bf16 == Tolerance(2e-2, 1e-2, 1e-2)  # DESIGN.md's BF16 test bounds
    assert bench_check.triton_tolerance("fp8") == bf16  # Triton computes FP8 caches in BF16
    cross = bench_check.cross_tolerance("fp8")
    assert cross.max_abs == pytest.approx(fp8.max_abs + bf16.max_abs)
    assert cross.mean_rel == pytest.approx(fp8.mean_rel + bf16.mean_rel)


def test_shape_mismatch_is_an_error():
    out, lse = _pair()
    with pytest.raises(ValueError, match="out shape"):
        compare(out[:, :8], lse, out, lse, bench_check.BF16_TOLERANCE, "reference")


def test_describe_names_the_verdict_and_numbers():
    out, lse = _pair()
    c = compare(torch.zeros_like(out), lse, out, lse, bench_check.BF16_TOLERANCE, "TRITON_MLA")
    text = c.describe()
    assert text.startswith("WRONG vs TRITON_MLA") and "mean rel 1" in text
    assert c.as_dict()["tolerance"]["max_abs"] == 2e-2
