"""One shape through check-then-time, on the CPU with fake kernels and injected timings."""

import os
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
    base = dict(device="cpu", sm_count=132, copy_bw_gbs=3000.0, mma_peak_tflops=650.0, timer=timer,
                modes=("eager",))
    base.update(kw)
    return RunSettings(**base)


def test_right_kernels_are_timed_and_compared():
    timer = FakeTimer([10.0, 12.0, 11.0], [30.0, 33.0, 36.0])  # ours, then TRITON_MLA
    contenders = Contenders(ours=bench_fakes.make_ours(), triton=bench_fakes.make_triton(),
                            reference=bench_fakes.reference)
    (row,) = bench_shape(SMALL, contenders, settings(timer))
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
    (row,) = bench_shape(SMALL, contenders, settings(timer))
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
    (row,) = bench_shape(shape, contenders, settings(FakeTimer([5.0]), reference_max_tokens=1024))
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
    (row,) = bench_shape(SMALL, contenders, settings(timer))
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
    (row,) = bench_shape(SMALL, contenders, settings(FakeTimer([5.0])))
    assert row["status"] == "wrong"
    assert "NaN/Inf" in row["note"]


def test_fp8_rows_use_fp8_tolerance():
    shape = Shape(batch=1, heads=16, context=64, dtype="fp8", page_size=16)

    def fp8_like_error(out, lse):
        out.mul_(1.04)  # 4% off: over BF16's bounds, inside FP8's
        lse.add_(0.1)

    contenders = Contenders(ours=bench_fakes.make_ours(corrupt=fp8_like_error), reference=bench_fakes.reference)
    (row,) = bench_shape(shape, contenders, settings(FakeTimer([5.0])))
    assert row["status"] == "ok", row["note"]
    bf16 = Shape(batch=1, heads=16, context=64, dtype="bf16", page_size=16)
    (row,) = bench_shape(bf16, contenders, settings(FakeTimer([5.0])))
    assert row["status"] == "wrong"


def test_ours_alone_and_triton_alone():
    (ours_row,) = bench_shape(SMALL, Contenders(ours=bench_fakes.make_ours()), settings(FakeTimer([7.0])))
    assert ours_row["status"] == "ok" and ours_row["ours_us"] == 7.0 and ours_row["triton_us"] is None
    assert ours_row["speedup"] is None
    (triton_row,) = bench_shape(SMALL, Contenders(triton=bench_fakes.make_triton()), settings(FakeTimer([9.0])))
    assert triton_row["status"] == "ok" and triton_row["triton_us"] == 9.0 and triton_row["ours_us"] is None


def test_kernel_error_is_recorded_not_raised():
    def broken(*args, **kwargs):
        raise ValueError("block_size 32 is not supported")

    (row,) = bench_shape(SMALL, Contenders(ours=broken, triton=bench_fakes.make_triton()), settings(FakeTimer()))
    assert row["status"] == "error"
    assert "ValueError: block_size 32 is not supported" in row["note"]


def test_shape_that_does_not_fit_is_skipped_before_allocating():
    made = []

    def ours(*args, **kwargs):
        made.append(1)

    big = Shape(batch=128, heads=128, context=32768, dtype="bf16")
    (row,) = bench_shape(big, Contenders(ours=ours, triton=bench_fakes.make_triton()),
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


# --- modes, lengths, accuracy, residency, kernel times -------------------------------------------


class RecordingTimer:
    """Runs each timed function once (as a replay would) and logs it; fixed times per kernel."""

    def __init__(self, log, ours=10.0, triton=30.0):
        self.log, self.times = log, {"ours": ours, "triton": triton}

    def __call__(self, fn):
        name = "ours" if fn.__qualname__.startswith("prepare_ours") else "triton"
        self.log.append(f"time {name}")
        fn()
        return [self.times[name]] * 3


def logging_contenders(log, **corrupt):
    def ours(*args, max_seq_len=None, **kwargs):
        log.append(f"ours {max_seq_len}")
        return bench_fakes.make_ours(corrupt=corrupt.get("ours"))(*args, max_seq_len=max_seq_len, **kwargs)

    def triton(*args, **kwargs):
        log.append(f"triton {args[8]}")  # num_kv_splits
        return bench_fakes.make_triton(corrupt=corrupt.get("triton"))(*args, **kwargs)

    def reference(*args, **kwargs):
        log.append("reference")
        return bench_fakes.reference(*args, **kwargs)

    return Contenders(ours=ours, triton=triton, reference=reference)


def test_both_modes_run_on_one_set_of_inputs_each_checked_before_it_is_timed(monkeypatch):
    log, made = [], []
    real_make_inputs = bench_runner.make_inputs
    monkeypatch.setattr(bench_runner, "make_inputs", lambda *a, **k: made.append(1) or real_make_inputs(*a, **k))
    shape = Shape(batch=2, heads=16, context=1500, dtype="bf16", page_size=64)
    rows = bench_shape(shape, logging_contenders(log),
                       settings(RecordingTimer(log), modes=("eager", "graph"), max_model_len=131072))
    assert len(made) == 1 and log.count("reference") == 1  # inputs and reference once per shape
    assert [r["mode"] for r in rows] == ["eager", "graph"]
    assert log == ["reference",
                   "ours 1500", "triton 2", "time ours", "ours 1500", "time triton", "triton 2",
                   "ours 131072", "triton 256", "time ours", "ours 131072", "time triton", "triton 256"]
    eager, graph = rows
    assert eager["ours_max_seq_len"] == 1500 and eager["triton_num_kv_splits"] == 2
    assert eager["max_model_len"] is None
    assert graph["ours_max_seq_len"] == 131072 and graph["triton_num_kv_splits"] == 256
    assert graph["max_model_len"] == 131072
    for row in rows:
        assert row["status"] == "ok", row["note"]
        assert row["ours_us"] == 10.0 and row["triton_us"] == 30.0 and row["speedup"] == pytest.approx(3.0)
        assert row["lengths"] == "uniform" and row["seq_len_max"] == 1500 and row["tokens"] == 3000
        # both contenders' errors against the reference, for each mode
        assert 0 < row["ours_vs_reference_max_abs"] < 2e-2 and 0 < row["triton_vs_reference_max_abs"] < 2e-2
        assert row["ours_vs_reference_mean_rel"] < 1e-2 and row["triton_vs_reference_mean_rel"] < 1e-2
        assert row["max_abs_ratio"] == pytest.approx(row["ours_vs_reference_max_abs"]
                                                     / row["triton_vs_reference_max_abs"])
        assert row["ours_replay_max_abs"] == 0.0 and row["triton_replay_max_abs"] == 0.0


def test_ragged_rows_count_the_real_lengths_and_hint_their_max():
    log = []
    shape = Shape(batch=6, heads=16, context=900, dtype="fp8", page_size=16, lengths="ragged")
    lengths = bench_runner.request_lengths(shape, 4)
    rows = bench_shape(shape, logging_contenders(log),
                       settings(RecordingTimer(log), modes=("eager", "graph"), max_model_len=4096, seed=4))
    eager, graph = rows
    assert eager["ours_max_seq_len"] == max(lengths) < 900 and graph["ours_max_seq_len"] == 4096
    assert f"ours {max(lengths)}" in log and "ours 4096" in log
    for row in rows:
        assert row["status"] == "ok", row["note"]
        assert row["label"] == "B6 H16 900 fp8 ragged" and row["lengths"] == "ragged"
        assert row["seq_len_max"] == max(lengths) and row["seq_len_min"] == min(lengths)
        assert row["tokens"] == sum(lengths)
        assert row["bytes"] == sum(lengths) * 576 + 6 * 16 * (576 + 512) * 2
        assert row["flops"] == 16 * sum(lengths) * 2176
        assert row["ours_gbs"] == pytest.approx(row["bytes"] / 10e-6 / 1e9)


def test_a_kernel_wrong_in_graph_mode_only_is_wrong_there_and_timed_in_eager():
    def wrong_when_planned_long(q, kv_cache, block_table, seq_lens, *, max_seq_len=None, out=None, lse=None, **kw):
        bench_fakes.make_ours()(q, kv_cache, block_table, seq_lens, max_seq_len=max_seq_len, out=out, lse=lse, **kw)
        if max_seq_len > 4096:  # e.g. splits that find no tokens are not skipped
            out.mul_(0.5)

    timer = FakeTimer([10.0], [30.0], [31.0])  # eager: ours, triton; graph: triton only
    rows = bench_shape(SMALL, Contenders(ours=wrong_when_planned_long, triton=bench_fakes.make_triton(),
                                         reference=bench_fakes.reference),
                       settings(timer, modes=("eager", "graph")))
    eager, graph = rows
    assert eager["status"] == "ok" and eager["ours_us"] == 10.0 and eager["speedup"] == pytest.approx(3.0)
    assert graph["status"] == "wrong" and graph["ours_us"] is None and graph["speedup"] is None
    assert graph["triton_us"] == 31.0 and "WRONG vs reference" in graph["note"]
    assert graph["ours_vs_reference_max_abs"] > 0.1  # still reported
    assert len(timer.timed) == 3


def test_an_answer_that_changes_in_the_timed_replays_is_not_a_time():
    calls = []

    def degrades(q, kv_cache, block_table, seq_lens, *, out=None, lse=None, **kw):
        bench_fakes.make_ours()(q, kv_cache, block_table, seq_lens, out=out, lse=lse, **kw)
        calls.append(1)
        if len(calls) > 1:  # right when checked, wrong when replayed
            out.zero_()

    log = []
    (row,) = bench_shape(SMALL, Contenders(ours=degrades, triton=bench_fakes.make_triton()),
                         settings(RecordingTimer(log)))
    assert row["status"] == "wrong" and row["ours_us"] is None and row["speedup"] is None
    assert "ours after the timed replays: WRONG vs its checked call" in row["note"]
    assert row["ours_replay_max_abs"] > 0.1 and row["triton_us"] == 30.0


def test_residency_variable_is_set_for_our_calls_only_and_restored(monkeypatch):
    variable = bench_runner.bench_residency.env_name()
    monkeypatch.setenv(variable, "previous")
    seen = {"ours": [], "triton": []}

    def ours(*args, **kwargs):
        seen["ours"].append(os.environ.get(variable))
        return bench_fakes.make_ours()(*args, **kwargs)

    def triton(*args, **kwargs):
        seen["triton"].append(os.environ.get(variable))
        return bench_fakes.make_triton()(*args, **kwargs)

    log = []
    rows = bench_shape(SMALL, Contenders(ours=ours, triton=triton),
                       settings(RecordingTimer(log), modes=("eager", "graph"), sm12x_residency=True))
    assert seen["ours"] == ["1"] * 4 and seen["triton"] == ["previous"] * 4  # check + timed, both modes
    assert os.environ[variable] == "previous"
    assert all(r["sm12x_residency"] is True and r["status"] == "ok" for r in rows)
    (plain,) = bench_shape(SMALL, Contenders(ours=ours), settings(RecordingTimer(log)))
    # without the flag, a value left in the shell is overridden: the row says no emulation, and there was none
    assert plain["sm12x_residency"] is False and seen["ours"][-2:] == ["0", "0"]
    assert os.environ[variable] == "previous"


def test_kernel_times_go_into_the_row():
    profiled = []

    def profiler(fn):
        profiled.append(fn.__qualname__)
        return {"decode_us": 8.0, "combine_us": 2.0, "step_us": 10.0, "combine_pct": 20.0,
                "kernels_per_step": 2.0, "note": ""}

    (row,) = bench_shape(SMALL, Contenders(ours=bench_fakes.make_ours(), triton=bench_fakes.make_triton()),
                         settings(FakeTimer([9.0], [20.0]), kernel_profiler=profiler))
    assert profiled == ["prepare_ours.<locals>.run"]  # ours only
    assert row["ours_decode_kernel_us"] == 8.0 and row["ours_combine_kernel_us"] == 2.0
    assert row["ours_kernels_us"] == 10.0 and row["ours_combine_pct"] == 20.0 and row["status"] == "ok"


def test_kernel_times_without_events_or_with_a_failing_profiler_are_notes():
    def empty(fn):
        from mla_plugin.bench import kernel_times
        return kernel_times.breakdown([], 5)

    def broken(fn):
        raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    for profiler, note in ((empty, "the profiler recorded no CUDA kernel events"),
                           (broken, "kernel times failed: RuntimeError: CUPTI_ERROR_NOT_INITIALIZED")):
        (row,) = bench_shape(SMALL, Contenders(ours=bench_fakes.make_ours()),
                             settings(FakeTimer([9.0]), kernel_profiler=profiler))
        assert row["status"] == "ok" and row["ours_us"] == 9.0
        assert note in row["note"] and row.get("ours_combine_pct") is None


def test_wrong_ours_is_not_profiled():
    def halve(out, lse):
        out.mul_(0.5)

    profiled = []
    (row,) = bench_shape(SMALL, Contenders(ours=bench_fakes.make_ours(corrupt=halve), reference=bench_fakes.reference),
                         settings(FakeTimer(), kernel_profiler=lambda fn: profiled.append(fn)))
    assert row["status"] == "wrong" and not profiled


def test_a_mode_that_does_not_fit_is_skipped_alone(monkeypatch):
    shape = Shape(batch=128, heads=128, context=4096, dtype="bf16")
    contenders = Contenders(ours=bench_fakes.make_ours(), triton=bench_fakes.make_triton())
    s = settings(FakeTimer(), modes=("eager", "graph"))
    eager_need = bench_runner.required_bytes(shape, contenders, s, mode="eager")
    graph_need = bench_runner.required_bytes(shape, contenders, s, mode="graph")
    assert graph_need > eager_need + 128 * 128 * (256 - 8) * 513 * 4 * 0.99  # TRITON_MLA's 256-split logits
    assert bench_runner.required_bytes(shape, contenders, s) == graph_need  # the hungrier mode

    made = []

    def no_room(*args, **kwargs):  # stands in for the allocation: the eager row must get this far
        made.append(1)
        raise torch.cuda.OutOfMemoryError("stop here")

    monkeypatch.setattr(bench_runner, "make_inputs", no_room)
    free = int((eager_need + graph_need) / 2 / bench_runner.MEMORY_HEADROOM)
    eager, graph = bench_shape(shape, contenders, settings(FakeTimer(), modes=("eager", "graph"),
                                                           free_bytes=lambda: free))
    assert graph["status"] == "skipped" and "GB free" in graph["note"]
    assert made == [1] and eager["status"] == "skipped" and "out of memory: stop here" in eager["note"]


def test_reference_memory_estimate_is_bounded_by_its_chunks():
    small = bench_runner.reference_bytes(Shape(batch=1, heads=16, context=1024, dtype="bf16"))
    big = bench_runner.reference_bytes(Shape(batch=128, heads=128, context=32768, dtype="bf16"))
    assert small < 100e6
    assert 0.5e9 < big < 3e9  # chunked: far below the 9.7 GB of the whole batch's KV in fp32
    assert bench_runner.DEFAULT_REFERENCE_MAX_TOKENS == 128 * 32768  # the whole default grid is checked
    assert bench_runner.uses_reference(Shape(128, 128, 32768, "fp8"), bench_runner.DEFAULT_REFERENCE_MAX_TOKENS)


def test_reference_out_of_memory_is_a_note_and_the_shape_still_runs():
    def reference(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    (row,) = bench_shape(SMALL, Contenders(ours=bench_fakes.make_ours(), triton=bench_fakes.make_triton(),
                                           reference=reference), settings(FakeTimer([10.0], [30.0])))
    assert row["status"] == "ok" and row["speedup"] == pytest.approx(3.0)
    assert "reference not run: out of memory" in row["note"] and row.get("ours_vs_reference_max_abs") is None
    assert row["ours_vs_triton_max_abs"] < 2e-2


def test_error_ratios():
    row = {"ours_vs_reference_max_abs": 0.01, "triton_vs_reference_max_abs": 0.02,
           "ours_vs_reference_mean_rel": 0.003, "triton_vs_reference_mean_rel": 0.0}
    assert bench_runner.error_ratios(row) == {"max_abs_ratio": 0.5, "mean_rel_ratio": None}
    assert bench_runner.error_ratios({}) == {"max_abs_ratio": None, "mean_rel_ratio": None}
    nan = {"ours_vs_reference_max_abs": float("nan"), "triton_vs_reference_max_abs": 0.02}
    assert bench_runner.error_ratios(nan)["max_abs_ratio"] is None


def test_our_real_op_on_the_cpu_takes_the_graph_mode_hint():
    from mla_plugin.ops import mla_decode
    from mla_plugin.reference import mla_decode_reference

    shape = Shape(batch=2, heads=16, context=80, dtype="fp8", page_size=16, lengths="ragged")
    rows = bench_shape(shape, Contenders(ours=mla_decode, reference=mla_decode_reference),
                       settings(FakeTimer([5.0], [6.0]), modes=("eager", "graph"), max_model_len=131072))
    assert [(r["mode"], r["status"], r["ours_max_seq_len"]) for r in rows] == [
        ("eager", "ok", max(bench_runner.request_lengths(shape, 0))), ("graph", "ok", 131072)], rows[1]["note"]


def test_preflight_runs_every_mode_with_residency():
    seen = []

    def ours(*args, max_seq_len=None, **kwargs):
        seen.append((max_seq_len, os.environ.get(bench_runner.bench_residency.env_name())))
        return bench_fakes.make_ours()(*args, max_seq_len=max_seq_len, **kwargs)

    failures = bench_runner.preflight(Contenders(ours=ours), settings(
        FakeTimer(), modes=("eager", "graph"), max_model_len=65536, sm12x_residency=True), ["bf16"], page_size=16)
    assert failures == [] and seen == [(32, "1"), (65536, "1")]
