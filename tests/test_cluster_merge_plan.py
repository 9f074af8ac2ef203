"""When the splits of a request merge inside a thread block cluster (no workspace, no combine
kernel) and when through the combine: host logic over the extension's occupancy answer, checked on
the CPU with the fake extension (tests/fake_cuda.py)."""

from __future__ import annotations

import pytest

from mla_plugin import configs, dispatch

from tests import fake_cuda


def shape(batch, heads=16, forced_splits=None, kv="fp8", q="bf16", mma="fp16"):
    return dispatch.LaunchShape(0, kv, q, kv if kv != "fp8" else q, mma, batch, heads, None, forced_splits,
                                None, False)


@pytest.fixture
def ext(monkeypatch):
    # Balanced splits off: by default they come first at 2..8 splits (tests/test_balanced_splits_plan.py).
    original = configs.tuning_for
    monkeypatch.setattr(configs, "tuning_for", lambda name: {**original(name), "ragged_headroom": 1})
    fake = fake_cuda.FakeExtension()
    with fake_cuda.installed(monkeypatch, fake):
        yield fake


def test_few_splits_that_fit_merge_in_a_cluster(ext):
    ext.CLUSTERS = 64
    plan = dispatch.launch_plan(shape(32))  # H200: 264 slots / 32 requests -> 8 splits
    assert plan.num_splits == 8 and plan.cluster_merge
    assert plan.partial_out is None and plan.partial_lse is None  # no workspace read or written


def test_splits_merge_by_the_combine_where_the_clusters_do_not_all_fit(ext):
    ext.CLUSTERS = 31  # one fewer than the 32 requests: a second wave of clusters
    plan = dispatch.launch_plan(shape(32))
    assert plan.num_splits == 8 and not plan.cluster_merge
    assert plan.partial_out is not None and plan.partial_lse is not None


def test_no_cluster_beyond_max_cluster_splits_or_without_splits(ext):
    ext.CLUSTERS = 10_000
    many = dispatch.launch_plan(shape(4))  # 66 splits: more than a cluster holds
    assert many.num_splits > configs.DEFAULTS["max_cluster_splits"] and not many.cluster_merge
    one = dispatch.launch_plan(shape(300))
    assert one.num_splits == 1 and not one.cluster_merge


def test_a_device_or_variant_without_clusters_merges_by_the_combine(ext):
    ext.CLUSTERS = 0  # what the extension answers for the e4m3 opt-in's 32-row ring or no clusters
    plan = dispatch.launch_plan(shape(32))
    assert plan.num_splits == 8 and not plan.cluster_merge and plan.partial_out is not None


def test_forced_splits_merge_in_a_cluster_too(ext):
    ext.CLUSTERS = 64
    plan = dispatch.launch_plan(shape(4, forced_splits=5))
    assert plan.num_splits == 5 and plan.cluster_merge


def test_max_cluster_splits_zero_turns_the_cluster_merge_off(ext, monkeypatch):
    ext.CLUSTERS = 64
    original = configs.tuning_for
    monkeypatch.setattr(configs, "tuning_for", lambda name: {**original(name), "max_cluster_splits": 0,
                                                             "ragged_headroom": 1})
    dispatch.launch_plan.cache_clear()
    plan = dispatch.launch_plan(shape(32))
    assert plan.num_splits == 8 and not plan.cluster_merge


def test_the_occupancy_question_names_the_variant_and_cluster_size(ext, monkeypatch):
    asked = []

    def answer(kv, q, out, mma, rows, splits, smem, device):
        asked.append((kv, q, out, mma, rows, splits, smem, device))
        return 64

    monkeypatch.setattr(ext, "max_active_clusters", answer)
    plan = dispatch.launch_plan(shape(64))
    assert plan.cluster_merge
    assert asked == [("fp8", "bf16", "bf16", "fp16", 16, 4, ext.SMEM, 0)]


def test_launch_passes_cluster_merge_to_the_kernel(ext, monkeypatch):
    import torch

    ext.CLUSTERS = 64
    q_nope = fake_cuda.fake(torch.zeros(32, 16, 512, dtype=torch.bfloat16))
    q_pe = fake_cuda.fake(torch.zeros(32, 16, 64, dtype=torch.bfloat16))
    cache = fake_cuda.fake(torch.zeros(4, 64, 576, dtype=torch.bfloat16))
    table = fake_cuda.fake(torch.zeros(32, 4, dtype=torch.int32))
    lens = fake_cuda.fake(torch.full((32,), 200, dtype=torch.int32))
    out = fake_cuda.fake(torch.zeros(32, 16, 512, dtype=torch.bfloat16))
    lse = fake_cuda.fake(torch.zeros(32, 16))
    dispatch.launch(q_nope, q_pe, cache, table, lens, out, lse, softmax_scale=0.1)
    call = fake_cuda.named(ext.calls[-1])
    assert call["num_splits"] == 8 and call["cluster_merge"] is True
    assert call["partial_out"] is None and call["partial_lse"] is None
