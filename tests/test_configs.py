"""configs/: every per-GPU tuning table loads through configs.load_tables() and each GPU it
names resolves to it through tuning_for(); the example serve configs are all accounted for
(vLLM's own parser checks them in tests/vllm_plugin/test_serve_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mla_plugin import _paths, configs

TUNING_FILES = ("gb10.yaml", "h100.yaml", "h200.yaml", "rtx5090.yaml", "rtx_pro_6000.yaml")
# Names as torch.cuda.get_device_name() reports them.
DEVICE_NAMES = {
    "rtx5090.yaml": "NVIDIA GeForce RTX 5090",
    "rtx_pro_6000.yaml": "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
    "gb10.yaml": "NVIDIA GB10",
    "h100.yaml": "NVIDIA H100 80GB HBM3",
    "h200.yaml": "NVIDIA H200",
}
SERVE_CONFIGS = (
    "deepseek-v2-lite-bf16-tp1.yaml",
    "deepseek-r1-fp8kv-tp2.yaml",
    "deepseek-r1-fp8kv-tp4.yaml",
    "deepseek-r1-fp8kv-tp8.yaml",
    "kimi-k2-fp8kv-tp8.yaml",
)


@pytest.fixture(autouse=True)
def fresh_tables():
    configs.load_tables.cache_clear()
    configs.tuning_for.cache_clear()
    yield
    configs.load_tables.cache_clear()
    configs.tuning_for.cache_clear()


def test_every_tuning_table_loads():
    tables = configs.load_tables()
    assert sorted(Path(t["source"]).name for t in tables) == sorted(TUNING_FILES)
    for table in tables:
        assert table["name"] and table["match"], table["source"]
        for key in configs.DEFAULTS:
            assert isinstance(table[key], (int, float)) and table[key] > 0, (table["source"], key)


def test_each_listed_gpu_resolves_to_its_own_table():
    for table in configs.load_tables():
        tuning = configs.tuning_for(table["name"])
        assert tuning["source"] == table["source"], table["name"]
        assert {k: tuning[k] for k in configs.DEFAULTS} == {k: table[k] for k in configs.DEFAULTS}


@pytest.mark.parametrize("file,device_name", sorted(DEVICE_NAMES.items()))
def test_the_names_torch_reports_resolve(file, device_name):
    assert Path(configs.tuning_for(device_name)["source"]).name == file


def test_an_unknown_gpu_gets_the_defaults():
    assert configs.tuning_for("NVIDIA A100-SXM4-80GB") == {**configs.DEFAULTS, "source": "defaults"}


def test_a_table_with_an_unknown_key_is_refused(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("name: X\nmatch: [X]\nwavez: 2\n")
    monkeypatch.setattr(configs, "tuning_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match=r"bad.yaml: needs `match`.*unknown: \['wavez'\]"):
        configs.load_tables()


def test_serve_configs_are_the_documented_ones():
    found = sorted(p.name for p in (_paths.configs_dir() / "serve").glob("*.yaml"))
    assert found == sorted(SERVE_CONFIGS)
