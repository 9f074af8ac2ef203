"""`MLA_PLUGIN_REPLACE_TRITON_MLA=1 vllm serve <model>` with no --attention-backend, through
vLLM's own code, on GPUs made up at the NVML boundary (fake_nvml.py).

Two real processes shared by the tests here: the parent loads the plugins through the
installed entry point on an all-SM120 machine, builds the engine configs, pickles them, asks
vLLM's CUDA selection (probes/cuda_selection.py) which backend the MLA layers get, then
repeats the selection for SM 9.0, 10.0 and 12.0 machines with and without the variable; the
child, fresh like vLLM's spawned engine core, unpickles the configs without having loaded
mla_plugin, loads the plugins and selects again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import fake_nvml

PROBES = Path(__file__).parent / "probes"
REPO = Path(__file__).resolve().parents[2]
OURS = "mla_plugin.backend.XqaMlaBackend"
VLLM_TRITON = "vllm.v1.attention.backends.mla.triton_mla.TritonMLABackend"


def _run_probe(script: str, *args) -> None:
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_LOGGING_LEVEL="INFO",
               MLA_PLUGIN_REPLACE_TRITON_MLA="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env[fake_nvml.ENV] = fake_nvml.as_env([fake_nvml.RTX_PRO_6000])
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, str(PROBES / script), *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, (
        f"{script} failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory, tiny_model_dir):
    out_dir = tmp_path_factory.mktemp("zero-flag")
    parent = _run_probe("zero_flag_parent.py", tiny_model_dir, out_dir)
    (out_dir / "parent.log").write_text(parent.stdout + parent.stderr)  # vLLM logs to stdout
    _run_probe("zero_flag_child.py", out_dir)
    return out_dir


@pytest.fixture(scope="module")
def parent(probe_dir) -> dict:
    return json.loads((probe_dir / "parent.json").read_text())


@pytest.fixture(scope="module")
def child(probe_dir) -> dict:
    return json.loads((probe_dir / "child.json").read_text())


def test_probes_import_this_checkout(parent, child):
    assert parent["mla_plugin_file"] == str(REPO / "mla_plugin" / "__init__.py")
    assert child["mla_plugin_file"] == str(REPO / "mla_plugin" / "__init__.py")


def test_entry_point_makes_the_override_once_with_one_log_line(parent, probe_dir):
    assert parent["mla_plugin_loaded_at_start"] is False
    assert parent["triton_mla_path"] == OURS
    assert parent["decision"]["applied"] is True
    # register() ran again in EngineArgs (twice more): NVML was asked once.
    assert parent["nvml_init_calls"] == 1 and parent["nvml_init_calls_after_configs"] == 1
    log = (probe_dir / "parent.log").read_text()
    said = [line for line in log.splitlines()
            if "mla_plugin: MLA_PLUGIN_REPLACE_TRITON_MLA=1 and every visible GPU is SM 12.x" in line]
    assert len(said) == 2, log[-3000:]  # the entry point's, and the sm120 rerun's after reset()
    # The entry point's on stderr (vLLM has set up no logging yet), the rerun's through vLLM's
    # handler (its format: "(MainProcess pid=...) INFO <date> [zero_flag.py:...] ...").
    assert sum(line.startswith("INFO mla_plugin: ") for line in said) == 1
    assert sum(" INFO " in line and "[zero_flag.py:" in line for line in said) == 1
    assert all("TRITON_MLA now runs mla_plugin.backend.XqaMlaBackend" in line for line in said)


def test_vllm_selects_our_backend_on_sm120_without_a_flag(parent):
    assert parent["auto_backend"] is None  # no --attention-backend: vLLM chooses
    assert parent["capability_seen_by_vllm"] == "12.0"
    assert parent["selected"] == OURS
    assert parent["selected_fp8"] == OURS


def test_explicit_triton_mla_is_ours_too(parent):
    assert parent["explicit_backend"] == "TRITON_MLA"
    assert parent["selected_explicit"] == OURS


@pytest.mark.parametrize("label", ["sm90", "sm100", "sm120"])
def test_other_machines_keep_vllms_choice(parent, label):
    with_variable = parent["machines"][f"{label} variable=1"]
    without = parent["machines"][f"{label} variable=None"]
    assert with_variable["capability_seen_by_vllm"] == without["capability_seen_by_vllm"]
    assert without["triton_mla_path"] == VLLM_TRITON
    assert without["selected"] != OURS
    if label == "sm120":
        assert with_variable["triton_mla_path"] == OURS
        assert with_variable["selected"] == OURS
        assert without["selected"] == VLLM_TRITON
    else:  # 9.0 / 10.0: the variable changes nothing
        assert with_variable["triton_mla_path"] == VLLM_TRITON
        assert with_variable["selected"] == without["selected"]


def test_sm100_choice_is_vllms_own_priority(parent):
    # vLLM's 10.x list starts with FLASHINFER_MLA, which imports on this CPU machine.
    assert parent["machines"]["sm100 variable=1"]["selected"] == (
        "vllm.v1.attention.backends.mla.flashinfer_mla.FlashInferMLABackend")


def test_spawned_process_unpickles_the_configs_without_mla_plugin(child):
    assert child["mla_plugin_loaded_at_start"] is False
    assert child["mla_plugin_loaded_after_unpickling"] is False
    assert child["auto_backend"] is None
    assert child["explicit_backend"] == "TRITON_MLA" and child["explicit_is_the_member"] is True
    assert child["triton_mla_path_before_plugins"] == VLLM_TRITON


def test_spawned_process_selects_our_backend_after_loading_plugins(child):
    assert child["triton_mla_path"] == OURS
    assert child["selected"] == OURS
    assert child["selected_explicit"] == OURS
