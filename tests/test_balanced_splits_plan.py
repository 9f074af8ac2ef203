"""Length-balanced splits, host side: the grid and split budget the plan gives the kernel
(dispatch.balanced_splits, launch_plan), checked on the CPU with the fake extension
(tests/fake_cuda.py). The kernel's side is tests/gpu/test_balanced_splits.py."""

from __future__ import annotations

import pytest

from mla_plugin import configs, dispatch

from tests import fake_cuda


def shape(batch, heads=16, forced_splits=None, split_cap=None):
    return dispatch.LaunchShape(0, "fp8", "bf16", "bf16", "fp16", batch, heads, split_cap, forced_splits, None, False)


@pytest.fixture
def ext(monkeypatch):
    fake = fake_cuda.FakeExtension()
    fake.CLUSTERS = 0  # every split plan merges by the combine
    with fake_cuda.installed(monkeypatch, fake):
        yield fake


def with_tuning(monkeypatch, **keys):
    original = configs.tuning_for
    monkeypatch.setattr(configs, "tuning_for", lambda name: {**original(name), **keys})
    dispatch.launch_plan.cache_clear()


@pytest.mark.parametrize("plan_splits,batch,headroom,cap,expected", [
    (4, 64, 2, None, (8, 256)),   # twice the plan's splits; the budget is the plan's total
    (8, 32, 3, None, (24, 256)),
    (4, 64, 1, None, (4, 0)),     # no headroom: the plan's splits, unbalanced
    (1, 300, 2, None, (1, 0)),    # no splits: nothing to balance (and no combine to add)
    (4, 64, 2, 6, (6, 256)),      # the longest request fills at most split_cap splits
    (4, 64, 2, 4, (4, 0)),        # ... so no room above the plan's
    (400, 1, 2, None, (512, 400)),  # at most MAX_KV_SPLITS, the combine's limit
])
def test_balanced_grid_and_budget(plan_splits, batch, headroom, cap, expected):
    tuning = {**configs.DEFAULTS, "ragged_headroom": headroom}
    assert dispatch.balanced_splits(plan_splits, batch, tuning, cap) == expected


def test_a_combine_plan_gets_the_headroom_and_the_budget(ext, monkeypatch):
    with_tuning(monkeypatch, ragged_headroom=2)
    plan = dispatch.launch_plan(shape(32))  # H200: 264 slots / 32 requests -> 8 splits
    assert plan.num_splits == 16 and plan.split_budget == 8 * 32 and not plan.cluster_merge
    rows_needed = 32 * plan.num_splits * plan.variant.rows
    assert plan.partial_lse.shape[0] >= rows_needed and plan.partial_out.shape[0] >= rows_needed


def test_headroom_one_keeps_the_plan_unbalanced(ext, monkeypatch):
    with_tuning(monkeypatch, ragged_headroom=1)
    plan = dispatch.launch_plan(shape(32))
    assert plan.num_splits == 8 and plan.split_budget == 0


def test_balanced_splits_come_before_the_cluster_merge(ext, monkeypatch):
    with_tuning(monkeypatch, ragged_headroom=2)
    ext.CLUSTERS = 10_000  # every cluster would fit
    plan = dispatch.launch_plan(shape(32))
    assert not plan.cluster_merge and plan.split_budget == 8 * 32 and plan.num_splits == 16


def test_many_splits_forced_splits_and_cluster_plans_are_not_balanced(ext, monkeypatch):
    with_tuning(monkeypatch, ragged_headroom=2, max_balanced_splits=8)
    many = dispatch.launch_plan(shape(8))  # 33 splits per request: more than max_balanced_splits
    assert many.num_splits == 33 and many.split_budget == 0
    forced = dispatch.launch_plan(shape(32, forced_splits=5))
    assert forced.num_splits == 5 and forced.split_budget == 0
    ext.CLUSTERS = 64
    with_tuning(monkeypatch, ragged_headroom=1)
    clustered = dispatch.launch_plan(shape(32))
    assert clustered.cluster_merge and clustered.num_splits == 8 and clustered.split_budget == 0


def test_one_split_plans_stay_without_a_combine(ext, monkeypatch):
    with_tuning(monkeypatch, ragged_headroom=2)
    plan = dispatch.launch_plan(shape(300))
    assert plan.num_splits == 1 and plan.split_budget == 0 and plan.partial_out is None


def test_launch_passes_the_budget_to_the_kernel(ext, monkeypatch):
    import torch

    with_tuning(monkeypatch, ragged_headroom=2)
    b, h = 32, 16
    q = fake_cuda.fake(torch.zeros(b, h, 576, dtype=torch.bfloat16))
    kv = fake_cuda.fake(torch.zeros(b * 4, 64, 576, dtype=torch.float8_e4m3fn))
    table = fake_cuda.fake(torch.zeros(b, 4, dtype=torch.int32))
    lens = fake_cuda.fake(torch.full((b,), 200, dtype=torch.int32))
    out = fake_cuda.fake(torch.zeros(b, h, 512, dtype=torch.bfloat16))
    lse = fake_cuda.fake(torch.zeros(b, h, dtype=torch.float32))
    dispatch.launch(q[..., :512], q[..., 512:], kv, table, lens, out, lse, softmax_scale=0.1, kv_scale=1.0,
                    max_seq_len=131072)
    call = fake_cuda.named(ext.calls[-1])
    assert call["num_splits"] == 16 and call["split_budget"] == 8 * b and not call["cluster_merge"]


def test_min_balanced_splits_one_balances_a_plan_without_splits(ext, monkeypatch):
    with_tuning(monkeypatch, ragged_headroom=2, min_balanced_splits=1)
    plan = dispatch.launch_plan(shape(264))  # one CTA slot per request: no splits
    assert plan.num_splits == 2 and plan.split_budget == 264 and plan.partial_out is not None
    with_tuning(monkeypatch, min_balanced_splits=2)
    plan = dispatch.launch_plan(shape(264))
    assert plan.num_splits == 1 and plan.split_budget == 0 and plan.partial_out is None
