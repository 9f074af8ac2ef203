"""One shape through check-then-time, on the CPU with fake kernels and injected timings."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_fakes sits beside the tests
import bench_fakes  # noqa: E402
from mla_plugin.bench import runner as bench_runner  # noqa: E402
from mla_plugin.bench.grid import Shape  # noqa: E402
from mla_plugin.bench.runner import Contenders, RunSettings, bench_shape  # noqa: E402

SMALL = Shape(batch=2, heads=16, context=96, dtype="bf16", page_size=32)


class FakeTimer:
    """Returns the given per-repetition times for each kernel, in the order they are timed."""

    def __init__(self, *series):
        self.series = list(series)
        self.timed = []

    def __call__(self, fn):
        self.timed.append(fn)
        return self.series.pop(0)


def settings(timer, **kw):
    base = dict(device="cpu", sm_count=132, copy_bw_gbs=3000.0, mma_peak_tflops=650.0, timer=timer)
    base.update(kw)
    return RunSettings(**base)


def test_right_kernels_are_timed_and_compared():
    timer = FakeTimer([10.0, 12.0, 11.0], [30.0, 33.0, 36.0])  # ours, then TRITON_MLA
    contenders = Contenders(ours=bench_fakes.make_ours(), triton=bench_fakes.make_triton(),
                            reference=bench_fakes.reference)
    row = bench_shape(SMALL, contenders, settings(timer))
    assert row["status"] == "ok", row["note"]
    assert row["ours_us"] == 11.0 and row["triton_us"] == 33.0  # medians
    assert row["speedup"] == pytest.approx(3.0)
    assert row["ours_vs_reference_max_abs"] < 2e-2
    assert row["triton_vs_reference_max_abs"] < 2e-2
    assert row["ours_vs_triton_mean_rel"] < 1e-2
    assert row["ours_gbs"] == pytest.approx(row["bytes"] / 11e-6 / 1e9)
    assert row["triton_tflops"] == pytest.approx(row["flops"] / 33e-6 / 1e12)
    assert row["ours_pct_copy_bw"] == pytest.approx(100 * row["ours_gbs"] / 3000.0)
    assert row["bound"] == "memory" and row["memory_floor_us"] > 0
    assert len(timer.timed) == 2


def test_wrong_ours_is_reported_wrong_and_not_timed():
    def halve(out, lse):
        out.mul_(0.5)

    timer = FakeTimer([1.0] * 3)  # would make it look 30x fast
    contenders = Contenders(ours=bench_fakes.make_ours(corrupt=halve), triton=bench_fakes.make_triton(),
                            reference=bench_fakes.reference)
    row = bench_shape(SMALL, contenders, settings(timer))
    assert row["status"] == "wrong"
    assert row["ours_us"] is None and row["speedup"] is None and row.get("ours_gbs") is None
    assert row["triton_us"] == 1.0  # the baseline is still timed
    assert "WRONG vs reference" in row["note"] and "WRONG vs TRITON_MLA" in row["note"]


def test_without_reference_a_disagreement_with_triton_counts_against_ours():
    shape = Shape(batch=64, heads=16, context=96, dtype="bf16", page_size=32)  # over the reference limit

    def off_by_a_bit(out, lse):
        out.add_(0.2)

    ref_calls = []

    def reference(*args, **kwargs):
        ref_calls.append(1)
        return bench_fakes.reference(*args, **kwargs)

    contenders = Contenders(ours=bench_fakes.make_ours(corrupt=off_by_a_bit), triton=bench_fakes.make_triton(),
                            reference=reference)
    row = bench_shape(shape, contenders, settings(FakeTimer([5.0]), reference_max_tokens=1024))
    assert not ref_calls  # 64 x 96 tokens is over the limit: the reference is not run
    assert row["status"] == "wrong" and row["ours_us"] is None
    assert "WRONG vs TRITON_MLA" in row["note"]
    assert row.get("ours_vs_reference_max_abs") is None


def test_wrong_triton_cannot_judge_ours():
    def garbage(out, lse):
        out.fill_(3.0)

    timer = FakeTimer([10.0])
    contenders = Contenders(ours=bench_fakes.make_ours(), triton=bench_fakes.make_triton(corrupt=garbage),
                            reference=bench_fakes.reference)
    row = bench_shape(SMALL, contenders, settings(timer))
    assert row["status"] == "triton-wrong"
    assert row["ours_us"] == 10.0 and row["triton_us"] is None and row["speedup"] is None
    assert len(timer.timed) == 1


def test_kernel_that_leaves_rows_unwritten_fails():
    def skip_last_row(q, kv_cache, block_table, seq_lens, *, out, lse, **kw):
        full_out, full_lse = torch.empty_like(out), torch.empty_like(lse)
        bench_fakes.make_ours()(q, kv_cache, block_table, seq_lens, out=full_out, lse=full_lse, **kw)
        out[:-1].copy_(full_out[:-1])  # the last row keeps what was there before
        lse[:-1].copy_(full_lse[:-1])

    contenders = Contenders(ours=skip_last_row, triton=bench_fakes.make_triton())
    row = bench_shape(SMALL, contenders, settings(FakeTimer([5.0])))
    assert row["status"] == "wrong"
    assert "NaN/Inf" in row["note"]


def test_fp8_rows_use_fp8_tolerance():
    shape = Shape(batch=1, heads=16, context=64, dtype="fp8", page_size=16)

    def fp8_like_error(out, lse):
        out.mul_(1.04)  # 4% off: over BF16's bounds, inside FP8's
        lse.add_(0.1)

    contenders = Contenders(ours=bench_fakes.make_ours(corrupt=fp8_like_error), reference=bench_fakes.reference)
    row = bench_shape(shape, contenders, settings(FakeTimer([5.0])))
    assert row["status"] == "ok", row["note"]
    bf16 = Shape(batch=1, heads=16, context=64, dtype="bf16", page_size=16)
    row = bench_shape(bf16, contenders, settings(FakeTimer([5.0])))
    assert row["status"] == "wrong"


def test_ours_alone_and_triton_alone():
    ours_row = bench_shape(SMALL, Contenders(ours=bench_fakes.make_ours()), settings(FakeTimer([7.0])))
    assert ours_row["status"] == "ok" and ours_row["ours_us"] == 7.0 and ours_row["triton_us"] is None
    assert ours_row["speedup"] is None
    triton_row = bench_shape(SMALL, Contenders(triton=bench_fakes.make_triton()), settings(FakeTimer([9.0])))
    assert triton_row["status"] == "ok" and triton_row["triton_us"] == 9.0 and triton_row["ours_us"] is None


def test_kernel_error_is_recorded_not_raised():
    def broken(*args, **kwargs):
        raise ValueError("block_size 32 is not supported")

    row = bench_shape(SMALL, Contenders(ours=broken, triton=bench_fakes.make_triton()), settings(FakeTimer()))
    assert row["status"] == "error"
    assert "ValueError: block_size 32 is not supported" in row["note"]


def test_shape_that_does_not_fit_is_skipped_before_allocating():
    made = []

    def ours(*args, **kwargs):
        made.append(1)

    big = Shape(batch=128, heads=128, context=32768, dtype="bf16")
    row = bench_shape(big, Contenders(ours=ours, triton=bench_fakes.make_triton()),
                      settings(FakeTimer(), free_bytes=lambda: 4 << 30))
    assert row["status"] == "skipped" and "GB free" in row["note"]
    assert not made
    need = bench_runner.required_bytes(big, Contenders(triton=bench_fakes.make_triton()), settings(FakeTimer()))
    assert need > 128 * 32768 * 1152  # at least the 4.8 GB cache


def test_reference_limit():
    assert bench_runner.uses_reference(Shape(8, 128, 1024, "bf16"), 16384)
    assert bench_runner.uses_reference(Shape(1, 128, 16384, "bf16"), 16384)
    assert not bench_runner.uses_reference(Shape(8, 16, 4096, "bf16"), 16384)
    assert not bench_runner.uses_reference(Shape(1, 16, 1024, "bf16"), 0)


def test_preflight_reports_a_kernel_that_cannot_run():
    def broken(*args, **kwargs):
        raise RuntimeError("the CUDA decode kernel is not available in this build yet")

    failures = bench_runner.preflight(Contenders(ours=broken, triton=bench_fakes.make_triton()),
                                      settings(FakeTimer()), ["bf16", "fp8"], page_size=64)
    assert len(failures) == 2
    assert all(f.startswith("our kernel fails on B1 H16 128") for f in failures)
    assert "not available in this build yet" in failures[0]
    assert bench_runner.preflight(Contenders(ours=bench_fakes.make_ours()), settings(FakeTimer()),
                                  ["bf16"], page_size=16) == []
