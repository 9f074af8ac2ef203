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


def test_ragged_lengths_count_each_request_at_its_own_length():
    shape = Shape(batch=3, heads=16, context=4096, dtype="bf16", lengths="ragged")
    lengths = [100, 4096, 7]
    assert rl.decode_flops(shape, seq_lens=lengths) == 16 * (100 + 4096 + 7) * 2176
    assert rl.decode_bytes(shape, lengths) == (100 + 4096 + 7) * 576 * 2 + 3 * 16 * (576 + 512) * 2
    fp8 = Shape(batch=3, heads=16, context=4096, dtype="fp8", lengths="ragged")
    assert rl.decode_bytes(fp8, lengths) == (100 + 4096 + 7) * 576 + 3 * 16 * (576 + 512) * 2


def test_ragged_multi_token_flops_are_causal_per_request():
    shape = Shape(batch=2, heads=2, context=10, dtype="bf16", page_size=16, query_len=3)
    assert rl.decode_flops(shape, seq_lens=[10, 4]) == 2 * ((8 + 9 + 10) + (2 + 3 + 4)) * 2176


def test_uniform_counts_are_unchanged_by_passing_the_lengths():
    for shape in (Shape(batch=4, heads=128, context=4096, dtype="bf16"),
                  Shape(batch=2, heads=16, context=100, dtype="fp8", page_size=16, query_len=4)):
        full = [shape.context] * shape.batch
        assert rl.decode_flops(shape, seq_lens=full) == rl.decode_flops(shape)
        assert rl.decode_bytes(shape, full) == rl.decode_bytes(shape)
        m1 = rl.kernel_metrics(shape, 50.0, 3000.0, 600.0)
        m2 = rl.kernel_metrics(shape, 50.0, 3000.0, 600.0, seq_lens=full)
        assert m1 == m2
    # the uniform numbers themselves, as before the generalisation
    assert rl.decode_bytes(Shape(batch=4, heads=128, context=4096, dtype="bf16")) == (
        4 * 4096 * 576 * 2 + 4 * 128 * 576 * 2 + 4 * 128 * 512 * 2)


def test_kernel_metrics_use_the_given_lengths():
    shape = Shape(batch=2, heads=16, context=32768, dtype="bf16", lengths="ragged")
    lengths = [32768, 1]
    m = rl.kernel_metrics(shape, 10.0, copy_bw_gbs=3000.0, mma_peak_tflops=None, seq_lens=lengths)
    assert m["gbs"] == pytest.approx(rl.decode_bytes(shape, lengths) / 10e-6 / 1e9)
    assert rl.arithmetic_intensity(shape, lengths) == pytest.approx(
        rl.decode_flops(shape, seq_lens=lengths) / rl.decode_bytes(shape, lengths))


def test_wrong_number_of_lengths_is_refused():
    with pytest.raises(ValueError, match="3 seq_lens for a batch of 2"):
        rl.decode_bytes(Shape(batch=2, heads=16, context=64, dtype="bf16"), [1, 2, 3])
