"""The GPU suite's case builders and launch wrapper (tests/gpu/cases.py) on CPU tensors, and the
plain-Python checks of the GPU test modules (moved here from under the gpu marker so CI runs
them)."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from mla_plugin import dispatch, kernel_variants
from tests import fake_cuda
from tests.gpu import cases, coverage
from tests.gpu import test_decode_grid as grid

FP8 = torch.float8_e4m3fn


# ---- the grid (was test_decode_grid.py's test_grid_covers_every_value_with_every_dtype) ---

def test_grid_covers_every_value_on_every_path():
    for dtype, fp8_math in grid.PATHS:
        path = [c for c in grid.ALL if c.dtype == dtype and c.fp8_math == fp8_math]
        assert len(path) == grid.CASES_PER_PATH
        assert {c.heads for c in path} == set(grid.HEADS)
        assert {c.block_size for c in path} == set(grid.BLOCK_SIZES)
        assert {c.seq_lens[0] for c in path} == set(grid.SEQ_LENS)
        assert {c.query_len for c in path} == set(grid.QUERY_LENS)
        assert {c.batch for c in path} == set(grid.BATCHES)
        if dtype == "fp8":
            assert {(c.q_elem, c.out_elem) for c in path} == {("bf16", "bf16"), ("fp16", "fp16"),
                                                              ("fp8", "bf16"), ("fp8", "fp16")}
    assert {(c.dtype, c.fp8_math) for c in grid.ALL} == set(grid.PATHS)


def test_grid_cases_are_valid_requests_and_the_mutation_subset_spans_every_path():
    for c in grid.ALL:
        assert all(s >= c.query_len or s == 0 for s in c.seq_lens) and c.batch * c.seq_lens[0] <= 3 * 32768 + 64 * 4097
    small = [c for c in grid.ALL if grid.work(c) <= grid.MUTATION_CHECK_MAX_WORK]
    assert {(c.dtype, c.fp8_math) for c in small} == set(grid.PATHS) and len(small) >= 40


# ---- Case --------------------------------------------------------------------------------

def test_case_dtypes_default_like_the_op():
    c = cases.Case(dtype="fp8", heads=4, block_size=16, seq_lens=[3])
    assert (c.q_elem, c.out_elem, c.math, c.mma) == ("bf16", "bf16", "fp16", "fp16")
    c = cases.Case(dtype="fp8", heads=4, block_size=16, seq_lens=[3], q_dtype="fp8", out_dtype="fp16",
                   fp8_math="e4m3")
    assert c.variant_dtypes() == ("fp8", "fp8", "fp16", "fp8") and str(c.arith) == "P fp8, out fp16"
    c = cases.Case(dtype="fp16", heads=4, block_size=16, seq_lens=[3])
    assert c.variant_dtypes() == ("fp16", "fp16", "fp16", "fp16") and c.math is None


def test_case_math_follows_the_environment_when_not_given(monkeypatch):
    c = cases.Case(dtype="fp8", heads=4, block_size=16, seq_lens=[3])
    monkeypatch.setenv("MLA_PLUGIN_FP8_MATH", "e4m3")
    assert c.math == "e4m3" and c.arith == cases.bounds.Arith("fp8", "bf16")


@pytest.mark.parametrize("bad", [dict(dtype="bf16", q_dtype="fp16"), dict(dtype="bf16", fp8_math="e4m3"),
                                 dict(dtype="fp8", q_dtype="bf16", out_dtype="fp16"), dict(dtype="int8")])
def test_case_refuses_what_the_op_refuses(bad):
    with pytest.raises(ValueError):
        cases.Case(heads=4, block_size=16, seq_lens=[3], **bad)


@pytest.mark.parametrize("block_size", coverage.PAGE_SIZES)
@pytest.mark.parametrize("variant", kernel_variants.variants(), ids=str)
def test_case_for_variant_asks_for_exactly_that_variant(variant, block_size):
    c = cases.case_for_variant(variant, block_size)
    assert c.variant_dtypes() == (variant.kv, variant.q, variant.out, variant.mma)
    assert c.rows == variant.rows and c.block_size == block_size
    rows = c.heads * c.query_len
    assert rows % 16 and rows % 32  # partial row tiles at 16 and at 32 rows per CTA
    assert 0 in c.seq_lens and c.query_len in c.seq_lens and max(c.seq_lens) > 1000


# ---- make_inputs -------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(dtype="bf16"), dict(dtype="fp16", padded_cache=True),
                                dict(dtype="fp8", kv_scale=0.5), dict(dtype="fp8", q_dtype="fp8"),
                                dict(dtype="fp8", q_dtype="fp16", fp8_math="e4m3")])
def test_make_inputs_garbage_tails_poisoned_slots_and_the_two_qs(kw):
    case = cases.Case(heads=3, block_size=16, seq_lens=[40, 0, 16, 1], query_len=1, **kw)
    inp = cases.make_inputs(case, device="cpu")
    bs, table = case.block_size, inp.block_table.long()
    cache = inp.kv_cache.float()
    for b, s in enumerate(case.seq_lens):
        pages = -(-s // bs)
        used = table[b, :pages]
        assert torch.isfinite(cache[used].reshape(-1, 576)[:s]).all()  # what the request may read
        assert torch.isnan(cache[used].reshape(-1, 576)[s:]).all()  # the rest of its last page
        tail = table[b, pages:]
        poisoned_page = tail[0]
        assert torch.isnan(cache[poisoned_page]).all()  # the first entry past: a poisoned page
        assert (tail[-1] == -1) and ((tail[1:] < 0) | (tail[1:] >= cache.shape[0])).sum() >= 1
    if case.padded_cache:
        assert inp.kv_cache.stride(0) > bs * 576
    T = case.batch * case.query_len
    assert inp.q_caller.shape == inp.q_kernel.shape == (T, 3, 576)
    q = inp.q if isinstance(inp.q, torch.Tensor) else torch.cat(inp.q, -1)
    if case.q_elem == "fp8":
        assert q.dtype == FP8 and torch.equal(inp.q_caller, q.float() * float(inp.q_scale))
    else:
        assert torch.equal(inp.q_caller, q.float())
    if case.math == "e4m3" and case.q_elem != "fp8":
        assert torch.equal(inp.q_kernel, cases.emulate_kernel_q(q)) and not torch.equal(inp.q_kernel, inp.q_caller)
    else:
        assert torch.equal(inp.q_kernel, inp.q_caller)
    ref, lse = cases.run_reference(case, inp)
    assert torch.isfinite(ref).all() and torch.isinf(lse[1]).all()


def test_strided_q_is_the_views_vllm_passes():
    case = cases.Case(dtype="bf16", heads=3, block_size=16, seq_lens=[5, 7])
    q_nope, q_pe = cases.make_inputs(case, device="cpu").q
    assert not q_nope.is_contiguous() and q_nope.stride(1) == 2 * 512 and q_pe.stride(0) == 3 * 192


def test_emulated_e4m3_q_is_a_power_of_two_row_scale_then_e4m3():
    q = (torch.randn(6, 4, 576) * torch.logspace(-3, 3, 24).view(6, 4, 1)).to(torch.bfloat16)
    emulated = cases.emulate_kernel_q(q)
    amax = q.float().abs().amax(-1, keepdim=True)
    m, e = torch.frexp(amax)
    scale = torch.ldexp(torch.ones_like(amax), e - cases.Q_FP8_EXPONENT)
    scaled = q.float() / scale
    assert float(scaled.abs().amax()) < 256 and float(scaled.abs().amax(-1).min()) >= 128
    assert torch.equal(emulated, scaled.to(FP8).float() * scale)


# ---- the launch wrapper ------------------------------------------------------------------

def test_forced_rows_sets_and_restores_the_variable(monkeypatch):
    monkeypatch.delenv(cases.ROWS_ENV, raising=False)
    assert cases.ROWS_ENV == dispatch.ROWS_ENV
    with cases.forced_rows(32):
        assert os.environ[cases.ROWS_ENV] == "32" and dispatch.forced_rows_per_cta() == 32
    assert cases.ROWS_ENV not in os.environ
    monkeypatch.setenv(cases.ROWS_ENV, "16")
    with cases.forced_rows(32):
        assert os.environ[cases.ROWS_ENV] == "32"
    assert os.environ[cases.ROWS_ENV] == "16"
    with cases.forced_rows(None):
        assert os.environ[cases.ROWS_ENV] == "16"


def test_run_op_passes_the_path_the_out_buffer_and_the_rows(monkeypatch):
    seen = []

    def fake_decode(q, kv_cache, block_table, seq_lens, **kw):
        seen.append((kw, os.environ.get(cases.ROWS_ENV)))
        return "result"

    monkeypatch.setattr(cases, "decode", fake_decode)
    monkeypatch.delenv(cases.ROWS_ENV, raising=False)
    case = cases.Case(dtype="fp8", heads=3, block_size=16, seq_lens=[5, 7], q_dtype="fp8", out_dtype="fp16",
                      fp8_math="e4m3", rows=32)
    inp = cases.make_inputs(case, device="cpu")
    assert cases.run_op(case, inp) == "result"
    kw, rows = seen[-1]
    assert rows == "32" and cases.ROWS_ENV not in os.environ
    assert kw["fp8_math"] == "e4m3" and kw["q_scale"] is inp.q_scale and kw["kv_scale"] is inp.kv_scale
    assert kw["out"].dtype == torch.float16 and torch.isnan(kw["out"]).all() and kw["out"].shape == (2, 3, 512)
    assert kw["return_lse"] is True and kw["query_len"] == 1 and kw["softmax_scale"] == cases.SOFTMAX_SCALE
    cases.run_op(case, inp, fp8_math=None)  # an explicit None stays None (the env-var path)
    assert seen[-1][0]["fp8_math"] is None
    bf16 = cases.Case(dtype="bf16", heads=3, block_size=16, seq_lens=[5])
    cases.run_op(bf16, cases.make_inputs(bf16, device="cpu"))
    assert "fp8_math" not in seen[-1][0] and "out" not in seen[-1][0] and seen[-1][1] is None


@pytest.fixture
def emulated_gpu(monkeypatch):
    """The op's CUDA branch on fake-CUDA tensors with the emulated kernel (tests/fake_cuda.py),
    the launch recorder installed fresh."""
    monkeypatch.setattr(dispatch, "launch_plan", coverage.PlanRecorder(dispatch.launch_plan))
    monkeypatch.setattr(coverage, "_launches", [])
    monkeypatch.setattr(cases, "DEVICE", "cpu")
    monkeypatch.setattr(cases, "ADAPTER", fake_cuda.call_as_cuda)
    ext = fake_cuda.FakeExtension(fake_cuda.emulated_kernel())
    with fake_cuda.installed(monkeypatch, ext):
        yield ext


def test_decode_records_the_plan_and_page_size_of_each_launch(emulated_gpu):
    case = cases.Case(dtype="fp16", heads=20, block_size=32, seq_lens=[700, 3], query_len=2, rows=32)
    inp = cases.make_inputs(case)
    out, lse = cases.run_op(case, inp)
    (launch,) = coverage.launches()
    assert launch.block_size == 32 and launch.variant == kernel_variants.find("fp16", "fp16", "fp16", "fp16", 32)
    assert cases.last_plan() is launch.plan and launch.num_splits > 1
    call = fake_cuda.named(emulated_gpu.calls[-1])
    assert call["rows"] == 32 and call["num_splits"] == launch.num_splits and call["mma"] == "fp16"
    err = cases.measure(case, inp, out, lse)
    assert not err.problems(), err.problems()


def test_decode_fails_loudly_when_dispatch_stops_planning_through_launch_plan(emulated_gpu, monkeypatch):
    original = dispatch.launch

    def launch_without_recorder(*args, **kwargs):
        recorder = dispatch.launch_plan
        monkeypatch.setattr(dispatch, "launch_plan", recorder.original)
        try:
            return original(*args, **kwargs)
        finally:
            monkeypatch.setattr(dispatch, "launch_plan", recorder)

    monkeypatch.setattr(dispatch, "launch", launch_without_recorder)
    case = cases.Case(dtype="bf16", heads=4, block_size=16, seq_lens=[30])
    with pytest.raises(AssertionError, match="did dispatch stop calling it"):
        cases.run_op(case, cases.make_inputs(case))


def test_a_padding_only_batch_of_no_rows_needs_no_launch(emulated_gpu):
    case = cases.Case(dtype="bf16", heads=4, block_size=16, seq_lens=[30])
    inp = cases.make_inputs(case)
    empty = dataclasses.replace(inp, q=inp.q_caller[:0].to(torch.bfloat16), block_table=inp.block_table[:0],
                                seq_lens=inp.seq_lens[:0])
    cases.decode(empty.q, empty.kv_cache, empty.block_table, empty.seq_lens, softmax_scale=0.1,
                 out=torch.empty(0, 4, 512, dtype=torch.bfloat16), lse=torch.empty(0, 4))
    assert coverage.launches() == ()


def test_measure_judges_the_e4m3_path_by_its_emulated_q_and_mean_error_by_the_callers(emulated_gpu):
    case = cases.Case(dtype="fp8", heads=16, block_size=64, seq_lens=[900, 30], query_len=2, fp8_math="e4m3")
    inp = cases.make_inputs(case)
    out, lse = cases.run_op(case, inp)
    assert not cases.measure(case, inp, out, lse).problems()
    default = dataclasses.replace(case, fp8_math="fp16")
    out16, _ = cases.run_op(default, inp)
    ratio = cases.mean_abs_error_vs_caller_q(case, inp, out) / cases.mean_abs_error_vs_caller_q(default, inp, out16)
    assert ratio > 5  # q and P in e4m3 against fp16 P: several times the error (GPU test: > 2)
    assert math.isfinite(ratio)
