"""FLOP/byte counting and roofline arithmetic of the bench (no GPU needed)."""

import math

import pytest

from mla_plugin.bench import roofline as rl
from mla_plugin.bench.grid import Shape


def test_flop_per_kv_token_per_head_matches_design():
    assert rl.FLOP_PER_ROW_TOKEN == 2176  # DESIGN.md: 2*576 + 2*512


def test_flops_one_query_token():
    shape = Shape(batch=2, heads=16, context=1000, dtype="bf16")
    assert rl.decode_flops(shape) == 2 * 16 * 1000 * 2176


def test_flops_causal_multi_token_rows_see_growing_prefixes():
    assert rl.attended_tokens(10, 3) == [8, 9, 10]
    assert rl.attended_tokens(10, 3, causal=False) == [10, 10, 10]
    shape = Shape(batch=1, heads=2, context=10, dtype="bf16", page_size=16, query_len=3)
    assert rl.decode_flops(shape) == 2 * (8 + 9 + 10) * 2176
    assert rl.decode_flops(shape, causal=False) == 2 * 30 * 2176


def test_bytes_count_kv_once_plus_q_and_out():
    bf16 = Shape(batch=4, heads=128, context=4096, dtype="bf16")
    kv = 4 * 4096 * 576 * 2
    q = 4 * 128 * 576 * 2
    out = 4 * 128 * 512 * 2
    assert rl.decode_bytes(bf16) == kv + q + out
    fp8 = Shape(batch=4, heads=128, context=4096, dtype="fp8")
    assert rl.decode_bytes(fp8) == kv // 2 + q + out  # q and out stay bf16


def test_bytes_multi_token_counts_q_and_out_per_query_token_kv_once():
    shape = Shape(batch=2, heads=16, context=100, dtype="bf16", page_size=16, query_len=4)
    assert rl.decode_bytes(shape) == 2 * 100 * 576 * 2 + 8 * 16 * (576 + 512) * 2


def test_arithmetic_intensity_at_128_heads_matches_design_table():
    # DESIGN.md: 128 heads give ~242 FLOP/byte with BF16 and ~483 with FP8 (KV traffic only)
    long_ctx = 1 << 20
    assert rl.arithmetic_intensity(Shape(1, 128, long_ctx, "bf16")) == pytest.approx(128 * 2176 / 1152, rel=1e-3)
    assert rl.arithmetic_intensity(Shape(1, 128, long_ctx, "fp8")) == pytest.approx(128 * 2176 / 576, rel=1e-3)
    assert round(rl.arithmetic_intensity(Shape(1, 128, long_ctx, "bf16"))) == 242


def test_copy_bandwidth_counts_read_and_write():
    assert rl.copy_bandwidth_gbs(1_000_000_000, 1e-3) == pytest.approx(2000.0)


def test_floors():
    assert rl.memory_floor_us(3_000_000, 3000.0) == pytest.approx(1.0)
    assert rl.compute_floor_us(656_000_000, 656.0) == pytest.approx(1.0)
    assert rl.compute_floor_us(1, None) is None


def test_kernel_metrics_memory_bound_shape():
    shape = Shape(batch=1, heads=16, context=32768, dtype="bf16")
    nbytes, flops = rl.decode_bytes(shape), rl.decode_flops(shape)
    time_us = 2 * nbytes / 3000e9 * 1e6  # half the copy bandwidth
    m = rl.kernel_metrics(shape, time_us, copy_bw_gbs=3000.0, mma_peak_tflops=600.0)
    assert m["gbs"] == pytest.approx(1500.0)
    assert m["pct_copy_bw"] == pytest.approx(50.0)
    assert m["tflops"] == pytest.approx(flops / (time_us * 1e-6) / 1e12)
    assert m["pct_mma_peak"] == pytest.approx(100 * m["tflops"] / 600.0)
    assert m["bound"] == "memory"
    assert m["pct_roofline"] == pytest.approx(50.0)  # the memory floor is the roofline here


def test_kernel_metrics_compute_bound_shape_uses_compute_floor():
    shape = Shape(batch=64, heads=128, context=32768, dtype="fp8")
    flops = rl.decode_flops(shape)
    time_us = flops / 100e12 * 1e6  # 100 TFLOP/s
    m = rl.kernel_metrics(shape, time_us, copy_bw_gbs=3000.0, mma_peak_tflops=400.0)
    assert m["bound"] == "compute"
    assert m["pct_mma_peak"] == pytest.approx(25.0)
    assert m["pct_roofline"] == pytest.approx(25.0)
    assert m["compute_floor_us"] > m["memory_floor_us"]


def test_kernel_metrics_without_mma_peak():
    shape = Shape(batch=64, heads=128, context=32768, dtype="fp8")
    m = rl.kernel_metrics(shape, 1000.0, copy_bw_gbs=3000.0, mma_peak_tflops=None)
    assert m["pct_mma_peak"] is None and m["compute_floor_us"] is None
    assert m["pct_roofline"] == pytest.approx(m["pct_copy_bw"])


def test_geomean():
    assert rl.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert rl.geomean([0.5, 2.0, 1.0]) == pytest.approx(1.0)
    assert rl.geomean([3.0, None]) == pytest.approx(3.0)
    assert rl.geomean([]) is None
    with pytest.raises(ValueError):
        rl.geomean([1.0, 0.0])


def test_median_of_even_and_odd_counts():
    assert rl.median([5.0, 1.0, 3.0]) == 3.0
    assert rl.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert not math.isnan(rl.median([1.0]))
