"""The tuning choice (`python -m mla_plugin tune`) is arithmetic on timings: checked on the CPU."""

from __future__ import annotations

import subprocess
import sys

import yaml

from mla_plugin import dispatch, tune

H100 = dispatch.DeviceFacts("NVIDIA H100 80GB HBM3", sm_count=132, smem_per_sm=233472)


def smem(dtype, rows):
    return 99 * 1024  # two CTAs per Hopper SM


def test_predicted_time_takes_the_nearest_measured_split():
    times = {1: 100.0, 4: 40.0, 16: 30.0}
    assert tune.predicted_time(times, 4) == 40.0
    assert tune.predicted_time(times, 8) == 40.0  # log-distance tie: the smaller count
    assert tune.predicted_time(times, 64) == 30.0


def test_choose_tuning_follows_the_timings():
    # Every shape is fastest with exactly one wave of CTAs: waves 1.0 must win.
    measured = {}
    for batch in (8, 32, 64):
        one_wave = (2 * 132) // batch
        measured[(batch, 16, 4096, "bf16")] = {s: (10.0 if s == one_wave else 50.0) for s in tune.SPLIT_CANDIDATES + (one_wave,)}
    choice = tune.choose_tuning(measured, H100, smem)
    assert choice["waves"] == 1.0
    # Now the same shapes prefer half a wave.
    measured = {}
    for batch in (8, 32, 64):
        half = 132 // batch
        measured[(batch, 16, 4096, "bf16")] = {s: (10.0 if s == half else 50.0) for s in tune.SPLIT_CANDIDATES + (half,)}
    assert tune.choose_tuning(measured, H100, smem)["waves"] == 0.5


def test_choose_tuning_picks_min_tokens_for_short_contexts():
    # Batch 1: a 1k context is fastest at 8 splits, i.e. 128 tokens per split.
    measured = {(1, 16, 1024, "bf16"): {s: (10.0 if s == 8 else 40.0) for s in tune.SPLIT_CANDIDATES}}
    assert tune.choose_tuning(measured, H100, smem)["min_tokens_per_split"] == 128


def test_written_table_loads_through_configs(tmp_path, monkeypatch):
    from mla_plugin import configs

    text = tune.table_yaml("NVIDIA H100 80GB HBM3", {"waves": 1.0, "max_splits": 64,
                                                      "min_tokens_per_split": 128, "geomean_us": 42.0},
                           [(32, 16, 4096, "bf16")])
    (tmp_path / "h100_80gb_hbm3.yaml").write_text(text)
    monkeypatch.setattr(configs, "tuning_dir", lambda: tmp_path)
    configs.load_tables.cache_clear()
    configs.tuning_for.cache_clear()
    try:
        t = configs.tuning_for("NVIDIA H100 80GB HBM3")
        assert (t["waves"], t["max_splits"], t["min_tokens_per_split"]) == (1.0, 64, 128)
        assert yaml.safe_load(text)["match"] == ["H100 80GB HBM3"]
    finally:
        configs.load_tables.cache_clear()
        configs.tuning_for.cache_clear()
    assert tune.default_output("NVIDIA H100 80GB HBM3").endswith("h100_80gb_hbm3.yaml")


def test_tune_refuses_without_cuda():
    env_cmd = [sys.executable, "-m", "mla_plugin", "tune"]
    res = subprocess.run(env_cmd, capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
                         timeout=300)
    assert res.returncode == 2
    assert "needs a CUDA GPU" in res.stderr
