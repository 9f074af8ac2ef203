"""The split merge inside a thread block cluster (csrc/decode/cluster_merge.cuh) against the fp32
reference and against the combine kernel, in eager mode and replayed from a CUDA graph captured
at max_model_len. Split counts are forced (4 and 8) at batches whose clusters the H200 holds at
once (it fits 62 clusters of 4 and 30 of 8 of our 16-row CTAs), so the plan must merge in clusters."""

from __future__ import annotations

import pytest
import torch

from mla_plugin import dispatch

from . import cases
from .cases import Case, assert_close, last_plan, make_inputs, measure, run_op, tuning_override

pytestmark = pytest.mark.gpu

# Every awkward length a split can meet: empty (no split has tokens: split 0 writes the zero
# rows), one token and a tile's worth (only split 0: it writes out itself), page boundaries +-1,
# and long ones that fill every split.
LENGTHS = [0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 300, 1000, 2047, 2048, 2049, 4095, 4096, 4097, 6000]
# Lengths per (forced splits, heads): at 16 heads one row tile per request, 40 requests in clusters
# of 4 and 20 in clusters of 8; at 20 heads x query_len 2 (40 rows: three row tiles, the last
# with padding rows) 20 and 10 requests.
SHAPES = {("4", 16): LENGTHS * 2, ("8", 16): LENGTHS, ("4", 20): LENGTHS, ("8", 20): LENGTHS[::2]}


def _case(dtype, block_size, seq_lens, query_len=1, heads=16):
    return Case(dtype=dtype, heads=heads, block_size=block_size, seq_lens=seq_lens, query_len=query_len,
                kv_scale=0.5 if dtype == "fp8" else 1.0, seed=block_size + query_len)


@pytest.mark.mutation_check
@pytest.mark.parametrize("splits", ["4", "8"], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("query_len,heads", [(1, 16), (2, 20)], ids=["ql1-h16", "ql2-h20"])
@pytest.mark.parametrize("block_size", [16, 64], ids=lambda bs: f"bs{bs}")
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_cluster_merge_matches_reference_and_the_combine(dtype, block_size, query_len, heads, splits, error_log,
                                                         monkeypatch):
    monkeypatch.setenv(dispatch.SPLITS_ENV, splits)
    seq_lens = SHAPES[(splits, heads)]
    case = _case(dtype, block_size, seq_lens, query_len, heads)
    inp = make_inputs(case)
    out, lse = run_op(case, inp)
    plan = last_plan()
    assert plan.cluster_merge and plan.num_splits == int(splits), f"{case}: expected a cluster merge, got {plan}"
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
    for b, n in enumerate(seq_lens):
        if n == 0:
            rows = slice(b * query_len, (b + 1) * query_len)
            assert torch.all(out[rows] == 0) and torch.all(lse[rows] == float("-inf")), f"request {b} (empty)"

    with tuning_override(max_cluster_splits=0):
        out_c, lse_c = run_op(case, inp)
        combine_plan = last_plan()
    assert not combine_plan.cluster_merge and combine_plan.num_splits == plan.num_splits
    # Same partials, merged in the same split order: equal up to the rounding of the final sum.
    diff = (out.float() - out_c.float()).abs().max().item()
    assert diff <= 2 ** -7 * out_c.float().abs().max().item(), f"{case}: cluster vs combine differ by {diff}"
    finite = torch.isfinite(lse_c)
    assert torch.equal(finite, torch.isfinite(lse))
    assert torch.allclose(lse[finite], lse_c[finite], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_cluster_merge_cuda_graph_replay_equals_eager(dtype, monkeypatch):
    if cases.EMULATED:
        pytest.skip("emulated GPU: needs the CUDA runtime")
    monkeypatch.setenv(dispatch.SPLITS_ENV, "4")
    seq_lens = SHAPES[("4", 16)]
    case = _case(dtype, 64, seq_lens)
    inp = make_inputs(case)
    step, out, lse = cases.op_step(case, inp, max_seq_len=8192)
    step()
    torch.cuda.synchronize()
    assert last_plan().cluster_merge, f"the captured launch should merge in clusters: {last_plan()}"
    base = torch.tensor(seq_lens, dtype=torch.int32)
    # Lengths only shrink (slots past the built ones hold NaN poison); some reach 0.
    cases.assert_replays_equal_eager(step, out, lse, inp.q, inp.seq_lens, lambda i: torch.clamp(base - 97 * i, min=0),
                                     replays=30)
