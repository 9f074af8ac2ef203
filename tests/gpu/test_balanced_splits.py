"""Length-balanced splits (dispatch.balanced_splits; balanced_min_tiles in csrc/decode/geometry.cuh):
where a plan merges its splits through the combine kernel, the grid has ragged_headroom times the
plan's splits per request and the kernel spreads the batch's tiles over them, so the long requests
of a ragged batch take more splits than the plan's per-request count and the short ones fewer.
Checked against the fp32 reference on skewed batches (where the long requests hit the grid's cap),
bitwise against the budget-free launch on a batch of equal lengths (the same split ranges), and in
a CUDA graph whose lengths change between replays (the balance is worked out on the GPU)."""

from __future__ import annotations

import pytest
import torch

from . import cases
from .cases import Case, assert_close, last_plan, make_inputs, measure, run_op, tuning_override

pytestmark = pytest.mark.gpu

# Three long requests among many short ones (empty, one token, page and tile boundaries +-1): the
# long ones need more splits than the grid has, so they take the grid's cap.
LONG = [6000, 4097, 2049]
SHORT = [0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 300]
SKEWED = LONG + SHORT * 2


def _case(dtype, block_size, seq_lens, query_len=1, heads=16):
    return Case(dtype=dtype, heads=heads, block_size=block_size, seq_lens=seq_lens, query_len=query_len,
                kv_scale=0.5 if dtype == "fp8" else 1.0, seed=3 * block_size + query_len)


def _assert_balanced(plan, batch, case):
    assert not plan.cluster_merge and plan.split_budget > 0, f"{case}: expected balanced splits, got {plan}"
    per_request = plan.split_budget // batch
    assert plan.split_budget == per_request * batch and plan.num_splits == 2 * per_request, (
        f"{case}: the grid should hold twice the plan's {per_request} splits per request: {plan}")


@pytest.mark.parametrize("query_len,heads", [(1, 16), (2, 20)], ids=["ql1-h16", "ql2-h20"])
@pytest.mark.parametrize("block_size", [16, 64], ids=lambda bs: f"bs{bs}")
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_balanced_splits_of_a_skewed_batch_match_the_reference(dtype, block_size, query_len, heads, error_log):
    case = _case(dtype, block_size, SKEWED, query_len, heads)
    inp = make_inputs(case)
    # Balanced at any plan split count (the default balances at most 8 per request), clusters off.
    with tuning_override(max_cluster_splits=0, ragged_headroom=2, max_balanced_splits=64):
        out, lse = run_op(case, inp)
        plan = last_plan()
    _assert_balanced(plan, len(SKEWED), case)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
    for b, n in enumerate(SKEWED):
        if n == 0:
            rows = slice(b * query_len, (b + 1) * query_len)
            assert torch.all(out[rows] == 0) and torch.all(lse[rows] == float("-inf")), f"request {b} (empty)"


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_a_plan_without_splits_balanced_matches_the_reference(dtype, error_log):
    # 297 requests at 16 heads overfill the H200's 264 CTA slots: the plan has one split each, and
    # with min_balanced_splits 1 the long ones take two (merged by the combine).
    seq_lens = (LONG + SHORT * 8) * 3
    case = _case(dtype, 64, seq_lens)
    inp = make_inputs(case)
    with tuning_override(max_cluster_splits=0, ragged_headroom=2, min_balanced_splits=1):
        out, lse = run_op(case, inp)
        plan = last_plan()
    assert plan.split_budget == len(seq_lens) and plan.num_splits == 2, f"{case}: {plan}"
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_equal_lengths_split_exactly_as_without_balancing(dtype):
    # 24 requests of 4097 tokens: the plan's splits per request, balanced or not, give every split
    # the same tiles, so the outputs are bitwise equal.
    case = _case(dtype, 64, [4097] * 24)
    inp = make_inputs(case)
    with tuning_override(max_cluster_splits=0, ragged_headroom=2, max_balanced_splits=64):
        out_b, lse_b = run_op(case, inp)
        balanced = last_plan()
    with tuning_override(max_cluster_splits=0, ragged_headroom=1, max_balanced_splits=64):
        out_p, lse_p = run_op(case, inp)
        plain = last_plan()
    _assert_balanced(balanced, 24, case)
    assert plain.split_budget == 0 and plain.num_splits * 2 == balanced.num_splits, f"{plain} vs {balanced}"
    assert torch.equal(out_b, out_p), f"{case}: balanced and plain splits differ"
    assert torch.equal(lse_b, lse_p)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_balanced_splits_cuda_graph_replay_equals_eager(dtype):
    if cases.EMULATED:
        pytest.skip("emulated GPU: needs the CUDA runtime")
    seq_lens = SKEWED
    case = _case(dtype, 64, seq_lens)
    inp = make_inputs(case)
    step, out, lse = cases.op_step(case, inp, max_seq_len=131072)
    with tuning_override(max_cluster_splits=0, ragged_headroom=2, max_balanced_splits=64):
        step()
        torch.cuda.synchronize()
        _assert_balanced(last_plan(), len(seq_lens), case)
        base = torch.tensor(seq_lens, dtype=torch.int32)
        # Lengths only shrink (slots past the built ones hold NaN poison); the short ones reach 0
        # first, so the batch's balance moves from replay to replay.
        cases.assert_replays_equal_eager(step, out, lse, inp.q, inp.seq_lens,
                                         lambda i: torch.clamp(base - 37 * i * (1 + base // 1000), min=0))
