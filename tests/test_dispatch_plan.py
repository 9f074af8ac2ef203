"""The launch plan (rows per CTA, KV splits) is host arithmetic on shapes: checked on the CPU."""

from __future__ import annotations

import pytest

from mla_plugin import dispatch

H100 = dispatch.DeviceFacts("NVIDIA H100 80GB HBM3", sm_count=132, smem_per_sm=233472)
RTX5090 = dispatch.DeviceFacts("NVIDIA GeForce RTX 5090", sm_count=170, smem_per_sm=102400)
TUNING = {"waves": 1.0, "max_splits": 64, "min_tokens_per_split": 256}


def smem_95k(rows: int) -> int:
    return 95 * 1024


def plan(batch, heads, facts=H100, tuning=TUNING, max_seq_len=None, query_len=1):
    return dispatch.plan_launch(batch, heads * query_len, facts, smem_95k, tuning, max_seq_len)


def test_rows_per_cta_16_where_two_ctas_share_an_sm():
    assert plan(4, 16).rows_per_cta == 16 and plan(4, 16).row_tiles == 1
    assert plan(4, 20).rows_per_cta == 16 and plan(4, 20).row_tiles == 2
    assert plan(4, 128).rows_per_cta == 16 and plan(4, 128).row_tiles == 8
    assert plan(4, 16, query_len=2).rows_per_cta == 16


def test_rows_per_cta_32_where_a_cta_is_alone_on_its_sm():
    assert plan(4, 16, facts=RTX5090).rows_per_cta == 16  # one m-tile: nothing to share
    assert plan(4, 20, facts=RTX5090).rows_per_cta == 32 and plan(4, 20, facts=RTX5090).row_tiles == 1
    assert plan(4, 128, facts=RTX5090).rows_per_cta == 32 and plan(4, 128, facts=RTX5090).row_tiles == 4
    emulated = dispatch.plan_launch(4, 64, H100, smem_95k, TUNING, None, sm12x_residency=True)
    assert emulated.rows_per_cta == 32 and emulated.row_tiles == 2


def test_ctas_per_sm_from_shared_memory():
    assert dispatch.ctas_per_sm(H100, 95 * 1024) == 2  # 228 KiB per SM holds two 96 KiB CTAs
    assert dispatch.ctas_per_sm(RTX5090, 95 * 1024) == 1  # SM12x: 100 KiB per SM, one CTA


def test_splits_fill_one_wave_without_spilling_into_a_second():
    # 132 SMs x 2 CTAs = 264 slots; 32 requests x 1 row tile -> 8 splits = 256 CTAs, not 9 = 288.
    p = plan(32, 16)
    assert p.target_ctas == 264 and p.num_splits == 8
    assert plan(64, 16).num_splits == 4
    assert plan(128, 16).num_splits == 2
    assert plan(300, 16).num_splits == 1  # already more than a wave
    assert plan(33, 128).num_splits == 1  # 33 x 8 row tiles = 264 CTAs


def test_split_caps_max_splits_and_min_tokens_per_split():
    assert plan(1, 16).num_splits == 64  # 264 would fit; max_splits caps it
    assert plan(1, 16, tuning={**TUNING, "max_splits": 1024}).num_splits == 264
    assert plan(1, 16, max_seq_len=1024).num_splits == 4  # 1024 / 256 tokens per split
    assert plan(1, 16, max_seq_len=100).num_splits == 1


def test_sm12x_gpu_plans_for_its_own_sm_count():
    assert plan(32, 16, facts=RTX5090).target_ctas == 170
    assert plan(32, 16, facts=RTX5090).num_splits == 5


def test_forced_splits_from_the_environment(monkeypatch):
    monkeypatch.setenv(dispatch.SPLITS_ENV, "12")
    assert dispatch.forced_splits() == 12
    monkeypatch.setenv(dispatch.SPLITS_ENV, "zero")
    with pytest.raises(ValueError, match="MLA_PLUGIN_SPLITS: expected a positive integer"):
        dispatch.forced_splits()
    monkeypatch.delenv(dispatch.SPLITS_ENV)
    assert dispatch.forced_splits() is None


def test_fp8_math_default_env_and_argument(monkeypatch):
    monkeypatch.delenv(dispatch.FP8_MATH_ENV, raising=False)
    assert dispatch.resolve_fp8_math() == "fp16"
    monkeypatch.setenv(dispatch.FP8_MATH_ENV, "e4m3")
    assert dispatch.resolve_fp8_math() == "e4m3"
    assert dispatch.resolve_fp8_math("fp16") == "fp16"  # the argument wins over the environment
    with pytest.raises(ValueError, match=r"fp8_math: expected one of \('fp16', 'e4m3'\), got 'bf16'"):
        dispatch.resolve_fp8_math("bf16")
    monkeypatch.setenv(dispatch.FP8_MATH_ENV, "fast")
    with pytest.raises(ValueError, match="MLA_PLUGIN_FP8_MATH: expected one of"):
        dispatch.resolve_fp8_math()


def test_sm12x_residency_switch(monkeypatch):
    monkeypatch.delenv(dispatch.SM12X_RESIDENCY_ENV, raising=False)
    assert dispatch.sm12x_residency() is False
    monkeypatch.setenv(dispatch.SM12X_RESIDENCY_ENV, "1")
    assert dispatch.sm12x_residency() is True
    monkeypatch.setenv(dispatch.SM12X_RESIDENCY_ENV, "yes")
    with pytest.raises(ValueError, match="MLA_PLUGIN_SM12X_RESIDENCY: expected 0 or 1"):
        dispatch.sm12x_residency()


def test_residency_smem_leaves_room_for_one_cta_only():
    smem = 100704
    reserve = dispatch.residency_smem_bytes(H100, smem)
    assert reserve > smem and reserve % 16 == 0
    assert dispatch.ctas_per_sm(H100, smem) == 2
    assert dispatch.ctas_per_sm(H100, reserve) == 1  # two reserves + the driver's 1 KiB each > 228 KiB
    assert reserve + dispatch.SM90_RESERVED_SMEM_PER_CTA <= H100.smem_per_sm  # one still fits
    assert dispatch.residency_smem_bytes(RTX5090, smem) == smem  # SM12x: one CTA per SM already


def test_emulated_sm12x_residency_plans_one_99k_cta_per_sm():
    p = dispatch.plan_launch(32, 16, H100, smem_95k, TUNING, None, sm12x_residency=True)
    assert p.target_ctas == 132 and p.num_splits == 4


def test_workspace_covers_every_split_grid_the_plan_makes():
    tuning = {"waves": 1.0, "max_splits": 256, "min_tokens_per_split": 64}
    rows = dispatch.workspace_rows(H100, tuning)
    for batch in (1, 2, 3, 8, 33, 100):
        for heads in (1, 16, 20, 64, 128):
            for q_len in (1, 2, 8):
                p = dispatch.plan_launch(batch, heads * q_len, H100, smem_95k, tuning, None)
                if p.num_splits > 1:
                    assert batch * p.row_tiles * p.num_splits * p.rows_per_cta <= rows


def fp8_smem(rows: int) -> int:
    """The FP8-cache kernel's shared memory on 16-bit MMAs in the SM12x pair-ring build
    (MLA_SM12X_PAIR_RING=1, csrc/config.cuh): 16 rows with a ring of two tiles (two CTAs per
    SM12x SM), 32 rows with four."""
    return {16: 48936, 32: 97864}[rows]


def test_fp8_16_row_ctas_pair_up_on_sm12x():
    assert dispatch.ctas_per_sm(RTX5090, fp8_smem(16)) == 2
    assert dispatch.ctas_per_sm(RTX5090, fp8_smem(32)) == 1
    # 51201 B would leave two CTAs and their reserves over 100 KiB
    assert dispatch.ctas_per_sm(RTX5090, 100 * 1024 // 2 - 1024) == 2
    assert dispatch.ctas_per_sm(RTX5090, 100 * 1024 // 2 - 1024 + 1) == 1
    p = dispatch.plan_launch(32, 16, RTX5090, fp8_smem, TUNING, None)
    assert p.rows_per_cta == 16 and p.target_ctas == 340 and p.num_splits == 10
    # Two 16-row CTAs per SM: H64 stays on 16-row tiles, as on Hopper
    assert dispatch.plan_launch(4, 64, RTX5090, fp8_smem, TUNING, None).rows_per_cta == 16


def test_emulated_sm12x_residency_keeps_the_pairs_that_sm12x_holds():
    assert dispatch.residency_smem_bytes(H100, fp8_smem(16)) == fp8_smem(16)  # two per SM either way
    p = dispatch.plan_launch(32, 16, H100, fp8_smem, TUNING, None, sm12x_residency=True)
    assert p.rows_per_cta == 16 and p.target_ctas == 264 and p.num_splits == 8
    assert dispatch.plan_launch(4, 64, H100, fp8_smem, TUNING, None, sm12x_residency=True).rows_per_cta == 16
    reserve = dispatch.residency_smem_bytes(H100, fp8_smem(32))
    assert dispatch.ctas_per_sm(H100, reserve) == 1 and reserve + 1024 <= H100.smem_per_sm
