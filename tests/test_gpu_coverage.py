"""The GPU suite's variant-coverage bookkeeping (tests/gpu/coverage.py, tests/gpu/conftest.py) on
the CPU: the gap list, the launch_plan recorder, the coverage test moved last, and the whole
chain end to end through the real dispatch on fake-CUDA tensors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mla_plugin import dispatch, kernel_variants
from mla_plugin.kernel_variants import Variant
from tests import fake_cuda
from tests.gpu import cases, coverage
from tests.gpu import conftest as gpu_conftest

A = Variant("bf16", "bf16", "bf16", "bf16", 16)
B = Variant("fp8", "fp8", "fp16", "fp8", 32)


def _launch(variant, block_size):
    return coverage.Launch(SimpleNamespace(variant=variant, num_splits=1), block_size)


def test_missing_lists_unlaunched_variants_and_page_sizes():
    assert coverage.missing([A, B], {A, B}, [_launch(A, 16), _launch(A, 64), _launch(B, 16), _launch(B, 64)]) == []
    gaps = coverage.missing([A, B], {A}, [_launch(A, 16), _launch(A, 32)])
    assert gaps == [f"{A}: not launched by the tests at block_size 64",
                    f"{B}: never launched (dispatch.launched_variants)"]
    # dispatch launched it, but no test did at these page sizes (e.g. only a direct ops call)
    assert coverage.missing([B], {B}, []) == [f"{B}: not launched by the tests at block_size 16, 64"]


def test_the_page_sizes_are_the_issues_16_and_64_and_kernel_page_sizes():
    from mla_plugin.geometry import BLOCK_SIZES

    assert {16, 64} <= set(coverage.PAGE_SIZES) <= set(BLOCK_SIZES)


def test_recorder_wraps_launch_plan_once_and_passes_everything_through(monkeypatch):
    calls = []

    def plan(shape):
        calls.append(shape)
        return f"plan of {shape}"

    plan.cache_clear = lambda: calls.append("cleared")
    plan.cache_info = lambda: "info"
    module = SimpleNamespace(launch_plan=plan)
    rec = coverage.recorder(module)
    assert module.launch_plan is rec and coverage.recorder(module) is rec  # idempotent
    assert module.launch_plan("s1") == "plan of s1" and rec.records == [coverage.Record("s1", "plan of s1")]
    rec.cache_clear()
    assert calls == ["s1", "cleared"] and rec.cache_info() == "info"


def test_the_coverage_test_runs_after_every_other():
    items = [SimpleNamespace(name=n, originalname=n.split("[")[0]) for n in
             ["test_a", gpu_conftest.COVERAGE_TEST, "test_b[x]", "test_b[y]"]]
    gpu_conftest.move_last(items)
    assert [i.name for i in items] == ["test_a", "test_b[x]", "test_b[y]", gpu_conftest.COVERAGE_TEST]
    from tests.gpu import test_variant_coverage

    assert hasattr(test_variant_coverage, gpu_conftest.COVERAGE_TEST)


def test_error_summary_lines():
    class Err:
        arith, max_abs, mean_abs, mean_rel, max_ratio, worst = "P bf16, out bf16", 1e-3, 1e-4, 1e-3, 0.5, "row 0"
        rho, rho_limit, bias, bias_limit, lse_max_abs, lse_ratio, nan_count = 0.9, 1.5, 0.0, 1e-4, 1e-6, 0.01, 0

    case = cases.Case(dtype="bf16", heads=4, block_size=16, seq_lens=[5])
    log = [gpu_conftest.log_entry(case, Err())]
    gpu_conftest._LOG.clear()
    (line,) = gpu_conftest.summary_lines(log)
    assert line.startswith("bf16 P bf16, out bf16: 1 cases; worst max|err| 0.001 = 0.50 x bound")
    assert "mean error / predicted 0.90..0.90 (limit 1.50)" in line


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(dispatch, "launch_plan", coverage.PlanRecorder(dispatch.launch_plan))
    monkeypatch.setattr(dispatch, "_launched", set())
    monkeypatch.setattr(coverage, "_launches", [])
    monkeypatch.setattr(cases, "DEVICE", "cpu")
    monkeypatch.setattr(cases, "ADAPTER", fake_cuda.call_as_cuda)
    with fake_cuda.installed(monkeypatch, fake_cuda.FakeExtension()):  # kernel: none, outputs stay NaN
        yield


def test_launching_every_variant_at_both_page_sizes_closes_every_gap(fake_gpu):
    variants = kernel_variants.variants()
    skipped = variants[3]
    for v in variants:
        for bs in coverage.PAGE_SIZES:
            if v == skipped and bs == 64:
                continue
            case = cases.case_for_variant(v, bs)
            case.seq_lens = [40, 0, 2, 2]  # the plan does not depend on the lengths
            cases.run_op(case, cases.make_inputs(case))
            assert cases.last_plan().variant == v
    assert coverage.missing(variants, dispatch.launched_variants(), coverage.launches()) == [
        f"{skipped}: not launched by the tests at block_size 64"]
    assert dispatch.launched_variants() == frozenset(variants)
