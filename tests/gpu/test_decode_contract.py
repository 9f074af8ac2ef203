"""The op contract on the GPU, one behaviour per test: padding rows, q layouts, scales,
dtypes, padded caches, caller-provided buffers and CUDA-graph replay."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from .cases import SOFTMAX_SCALE, Case, assert_close, make_inputs, measure, run_op

pytestmark = pytest.mark.gpu


def _check(case, error_log, **kw):
    inp = make_inputs(case)
    out, lse = run_op(case, inp, **kw)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
    return inp, out, lse


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_seq_len_zero_rows_give_zeros_and_no_nan(dtype, error_log):
    case = Case(dtype=dtype, heads=16, block_size=64, seq_lens=[0, 300, 0, 1, 0], query_len=1)
    inp, out, lse = _check(case, error_log)
    for b in (0, 2, 4):
        assert torch.all(out[b] == 0)
        assert torch.all(lse[b] == float("-inf"))


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_split_kv_ragged_batch_with_padding_rows(dtype, error_log):
    # batch 2 x 16 heads underfills the GPU: the op splits the 9000-token request.
    _check(Case(dtype=dtype, heads=16, block_size=16, seq_lens=[9000, 0, 17], query_len=2), error_log)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_strided_q_equals_contiguous_q(dtype):
    case = Case(dtype=dtype, heads=20, block_size=32, seq_lens=[700, 33], query_len=2, strided_q=True)
    inp = make_inputs(case)
    out_strided, lse_strided = run_op(case, inp)
    q_nope, q_pe = inp.q
    assert not q_nope.is_contiguous() and not q_pe.is_contiguous()
    contiguous = dataclasses.replace(inp, q=torch.cat([q_nope, q_pe], dim=-1).contiguous())
    out_contig, lse_contig = run_op(case, contiguous)
    assert torch.equal(out_strided, out_contig)
    assert torch.equal(lse_strided, lse_contig)


@pytest.mark.parametrize("kv_scale", [0.25, 2.0])
def test_fp8_kv_scale(kv_scale, error_log):
    _check(Case(dtype="fp8", heads=16, block_size=64, seq_lens=[513, 64, 1], kv_scale=kv_scale), error_log)


@pytest.mark.parametrize("heads", [16, 128])
def test_fp8_query_with_q_scale(heads, error_log):
    _check(Case(dtype="fp8", heads=heads, block_size=64, seq_lens=[2000, 5], q_fp8=True, kv_scale=0.5),
           error_log)


@pytest.mark.parametrize("dtype", ["fp16"])
def test_fp16_cache_and_query(dtype, error_log):
    _check(Case(dtype=dtype, heads=32, block_size=32, seq_lens=[1500, 31, 2], query_len=2), error_log)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_cache_with_padded_block_stride(dtype, error_log):
    _check(Case(dtype=dtype, heads=16, block_size=32, seq_lens=[333, 96], padded_cache=True), error_log)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_non_causal_multi_token(dtype, error_log):
    _check(Case(dtype=dtype, heads=16, block_size=64, seq_lens=[130, 4], query_len=4, causal=False), error_log)


def test_writes_into_given_buffers():
    case = Case(dtype="bf16", heads=16, block_size=64, seq_lens=[100, 200])
    inp = make_inputs(case)
    out = torch.full((2, 16, 512), float("nan"), dtype=torch.bfloat16, device="cuda")
    lse = torch.full((2, 16), float("nan"), dtype=torch.float32, device="cuda")
    got_out, got_lse = run_op(case, inp, out=out, lse=lse)
    assert got_out.data_ptr() == out.data_ptr() and got_lse.data_ptr() == lse.data_ptr()
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_cuda_graph_replay_equals_eager(dtype):
    from mla_plugin import ops

    # Small batch, long context: the captured launch includes split-KV and the combine.
    case = Case(dtype=dtype, heads=16, block_size=64, seq_lens=[5000, 70, 0], query_len=2)
    inp = make_inputs(case)
    q = inp.q
    out = torch.empty(6, 16, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(6, 16, dtype=torch.float32, device="cuda")

    def step():
        ops.mla_decode(q, inp.kv_cache, inp.block_table, inp.seq_lens, softmax_scale=SOFTMAX_SCALE,
                       kv_scale=inp.kv_scale, query_len=2, out=out, lse=lse, return_lse=True,
                       max_seq_len=8192)

    step()  # warm-up: builds, allocates the split workspace
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    eager_out, eager_lse = [], []
    graph_out, graph_lse = [], []
    for i in range(100):
        # New inputs each replay, written into the captured buffers in place.
        # Lengths only shrink: slots past the built lengths hold NaN poison (make_inputs).
        inp.seq_lens.copy_(torch.tensor([5000 - 37 * i, 70 - i % 50, 0], dtype=torch.int32))
        for part in (q if isinstance(q, tuple) else (q,)):
            part.mul_(-1)
        graph.replay()
        graph_out.append(out.clone())
        graph_lse.append(lse.clone())
        step()
        eager_out.append(out.clone())
        eager_lse.append(lse.clone())
    torch.cuda.synchronize()
    for i in range(100):
        assert torch.equal(graph_out[i], eager_out[i]), f"replay {i}: output differs from eager"
        assert torch.equal(graph_lse[i], eager_lse[i]), f"replay {i}: lse differs from eager"
    assert not torch.isnan(torch.stack(graph_out)).any()
