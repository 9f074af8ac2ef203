"""The op contract on the GPU, one behaviour per test: padding rows, split-KV, q layouts and
alignment, scales, dtypes, padded caches, caller-provided buffers and CUDA-graph replay. Every
output is judged by tests/gpu/bounds.py's derived bounds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from . import cases
from .cases import SOFTMAX_SCALE, Case, assert_close, last_plan, make_inputs, measure, run_op

pytestmark = pytest.mark.gpu


def _check(case, error_log, **kw):
    inp = make_inputs(case)
    out, lse = run_op(case, inp, **kw)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
    return inp, out, lse


@pytest.mark.mutation_check
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_seq_len_zero_rows_give_zeros_and_no_nan(dtype, error_log):
    case = Case(dtype=dtype, heads=16, block_size=64, seq_lens=[0, 300, 0, 1, 0], query_len=1)
    inp, out, lse = _check(case, error_log)
    for b in (0, 2, 4):
        assert torch.all(out[b] == 0)
        assert torch.all(lse[b] == float("-inf"))


@pytest.mark.mutation_check
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp8"])
def test_split_kv_ragged_batch_with_padding_rows(dtype, error_log):
    # batch 3 x 16 heads underfills the GPU: the plan splits the 9000-token request.
    case = Case(dtype=dtype, heads=16, block_size=16, seq_lens=[9000, 0, 17], query_len=2)
    _check(case, error_log)
    plan = last_plan()
    assert plan.num_splits > 1, f"{case}: expected a split-KV launch, the plan chose {plan.num_splits} split(s)"


@pytest.mark.mutation_check
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_split_kv_with_max_seq_len_hint_splits_and_matches(dtype, error_log):
    # The hint vLLM passes (max_seq_len) caps the split count at max_seq_len / min_tokens_per_split.
    case = Case(dtype=dtype, heads=16, block_size=64, seq_lens=[3000, 5], query_len=1)
    _check(case, error_log, max_seq_len=4096)
    plan = last_plan()
    assert plan.num_splits > 1, f"{case}: expected a split-KV launch, the plan chose {plan.num_splits} split(s)"


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


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of t whose data_ptr is one element past a 16-byte boundary."""
    storage = torch.empty(t.numel() + 16, dtype=t.dtype, device=t.device)
    odd = storage[1:1 + t.numel()].view(t.shape)
    odd.copy_(t)
    assert odd.data_ptr() % 16
    return odd


@pytest.mark.mutation_check
@pytest.mark.parametrize("dtype,q_dtype", [("bf16", "bf16"), ("fp8", "bf16"), ("fp8", "fp8")])  # fp8 q: fp8 cache only
def test_misaligned_q_is_copied_and_still_right(dtype, q_dtype, error_log):
    # The op copies a q whose pointer is not 16-byte aligned (ops.mla_decode's docstring):
    # same result as the aligned q, bit for bit, and within the bounds.
    case = Case(dtype=dtype, heads=16, block_size=32, seq_lens=[600, 31], query_len=2,
                q_dtype=q_dtype, strided_q=False)
    inp = make_inputs(case)
    aligned_out, aligned_lse = run_op(case, inp)
    odd = dataclasses.replace(inp, q=_misaligned(inp.q))
    out, lse = run_op(case, odd)
    assert torch.equal(out, aligned_out) and torch.equal(lse, aligned_lse)
    if q_dtype != "fp8":  # and as a pair: q_nope misaligned, q_pe a view of the same storage
        pair = dataclasses.replace(inp, q=(odd.q[..., :512], odd.q[..., 512:]))
        out_pair, _ = run_op(case, pair)
        assert torch.equal(out_pair, aligned_out)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)


@pytest.mark.mutation_check
@pytest.mark.parametrize("kv_scale", [0.25, 2.0])
def test_fp8_kv_scale(kv_scale, error_log):
    _check(Case(dtype="fp8", heads=16, block_size=64, seq_lens=[513, 64, 1], kv_scale=kv_scale), error_log)


@pytest.mark.mutation_check
@pytest.mark.parametrize("out_dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("heads", [16, 128])
def test_fp8_query_with_q_scale(heads, out_dtype, error_log):
    _check(Case(dtype="fp8", heads=heads, block_size=64, seq_lens=[2000, 5], q_dtype="fp8", out_dtype=out_dtype,
                kv_scale=0.5), error_log)


@pytest.mark.mutation_check
def test_fp8_cache_with_fp16_query(error_log):
    # An fp16 model with an FP8 cache: fp16 q, fp16 output.
    _check(Case(dtype="fp8", heads=32, block_size=32, seq_lens=[1500, 31, 2], query_len=2, q_dtype="fp16"),
           error_log)


@pytest.mark.mutation_check
def test_fp16_cache_and_query(error_log):
    _check(Case(dtype="fp16", heads=32, block_size=32, seq_lens=[1500, 31, 2], query_len=2), error_log)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_cache_with_padded_block_stride(dtype, error_log):
    _check(Case(dtype=dtype, heads=16, block_size=32, seq_lens=[333, 96], padded_cache=True), error_log)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_non_causal_multi_token(dtype, error_log):
    _check(Case(dtype=dtype, heads=16, block_size=64, seq_lens=[130, 4], query_len=4, causal=False), error_log)


@pytest.mark.mutation_check
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_writes_into_given_buffers(dtype, error_log):
    case = Case(dtype=dtype, heads=16, block_size=64, seq_lens=[100, 200])
    inp = make_inputs(case)
    out = torch.full((2, 16, 512), float("nan"), dtype=torch.bfloat16, device=cases.device())
    lse = torch.full((2, 16), float("nan"), dtype=torch.float32, device=cases.device())
    got_out, got_lse = run_op(case, inp, out=out, lse=lse)
    assert got_out.data_ptr() == out.data_ptr() and got_lse.data_ptr() == lse.data_ptr()
    err = measure(case, inp, out, lse)  # the caller's buffers themselves, against the reference
    error_log(case, err)
    assert_close(case, err)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_cuda_graph_replay_equals_eager(dtype):
    if cases.EMULATED:
        pytest.skip("emulated GPU: needs the CUDA runtime")
    # Small batch, long context: the captured launch includes split-KV and the combine.
    case = Case(dtype=dtype, heads=16, block_size=64, seq_lens=[5000, 70, 0], query_len=2)
    inp = make_inputs(case)
    q = inp.q
    out = torch.empty(6, 16, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(6, 16, dtype=torch.float32, device="cuda")
    fp8 = dict(fp8_math=case.math) if dtype == "fp8" else {}

    def step():
        cases.decode(q, inp.kv_cache, inp.block_table, inp.seq_lens, softmax_scale=SOFTMAX_SCALE,
                     kv_scale=inp.kv_scale, query_len=2, out=out, lse=lse, return_lse=True,
                     max_seq_len=8192, **fp8)

    step()  # warm-up: builds, allocates the split workspace
    torch.cuda.synchronize()
    assert last_plan().num_splits > 1, f"the captured launch should split, the plan chose {last_plan().num_splits}"
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


@pytest.mark.parametrize("splits", ["1", None])
@pytest.mark.parametrize("dtype", ["fp16", "fp8", "bf16"])
def test_running_max_jumps_far_past_the_lazy_slack_mid_sequence(dtype, splits, error_log, monkeypatch):
    # Keys along head 0's query at tokens 700, 1500, 2300 and 3500: its score jumps there by
    # 12-48 powers of two over everything before, far past the lazy max's slack (2^8, f16 P), after
    # O has accumulated: the reference max must move and O be rescaled mid-sequence, in one CTA
    # (splits 1) and in the plan's splits. The other heads see ordinary keys.
    from mla_plugin import dispatch

    if splits:
        monkeypatch.setenv(dispatch.SPLITS_ENV, splits)
    case = Case(dtype=dtype, heads=16, block_size=64, seq_lens=[4000, 2500], query_len=1,
                kv_scale=0.25 if dtype == "fp8" else 1.0)
    inp = make_inputs(case)
    q0 = inp.q_caller[0, 0]  # request 0's token, head 0 (fp32)
    direction = q0 / q0.norm()
    log2e = 1.4426950408889634
    spikes = ((700, 12.0), (1500, 24.0), (2300, 36.0), (3500, 48.0))
    for token, jump in spikes:
        # score = |q0| * alpha * SOFTMAX_SCALE (natural units): alpha for `jump` powers of two
        alpha = jump / (float(q0.norm()) * SOFTMAX_SCALE * log2e)
        page = int(inp.block_table[0, token // case.block_size])
        key = direction * alpha / case.kv_scale  # stored value (fp8: times 1 / kv_scale)
        inp.kv_cache[page, token % case.block_size] = key.to(inp.kv_cache.dtype)
    out, lse = run_op(case, inp)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
    # Head 0 of request 0 ends up on the last, largest key's value: far from the others' mix.
    token = spikes[-1][0]
    last = inp.kv_cache[int(inp.block_table[0, token // case.block_size]), token % case.block_size, :512]
    last = last.float() * case.kv_scale
    assert torch.allclose(out[0, 0].float(), last, rtol=0.02, atol=0.02)
