"""The `vllm serve --attention-backend MLA_XQA_SM120` path, through vLLM's own code.

Two real processes, shared by every test here (each one costs vLLM's start-up): the
parent loads plugins through the installed entry point, parses the CLI, builds the
engine config and pickles it; the child, fresh like vLLM's spawned engine core,
unpickles it without having loaded mla_plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

PROBES = Path(__file__).parent / "probes"
BACKEND_CLASS = "mla_plugin.backend.XqaMlaBackend"


def _run_probe(script: str, *args) -> None:
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_LOGGING_LEVEL="WARNING")
    result = subprocess.run(
        [sys.executable, str(PROBES / script), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, (
        f"{script} failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}"
    )


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory, tiny_model_dir):
    out_dir = tmp_path_factory.mktemp("serve-path")
    _run_probe("parent_process.py", tiny_model_dir, out_dir)
    _run_probe("spawned_process.py", out_dir)
    return out_dir


@pytest.fixture(scope="module")
def parent(probe_dir) -> dict:
    return json.loads((probe_dir / "facts.json").read_text())


@pytest.fixture(scope="module")
def child(probe_dir) -> dict:
    return json.loads((probe_dir / "child_facts.json").read_text())


def test_entry_point_is_installed(parent):
    assert "mla_xqa_sm120 = mla_plugin:register" in parent["entry_points"]


def test_load_general_plugins_registers_the_backend(parent):
    assert parent["mla_plugin_loaded_at_start"] is False
    assert parent["member_before_plugins"] is False
    assert parent["member_after_plugins"] is True
    assert parent["member_class"] == BACKEND_CLASS
    assert parent["member_class_name"] == "MLA_XQA_SM120"


def test_backend_is_listed_among_vllm_choices(parent):
    listed = parent["unknown_backend_error"].split("Valid options are: ")[1]
    assert "MLA_XQA_SM120" in listed.split(", ")


def test_cli_and_engine_args_select_the_backend(parent):
    assert parent["parsed_attention_backend"] == "MLA_XQA_SM120"
    assert parent["config_backend_is_member"] is True
    assert parent["config_backend_class"] == BACKEND_CLASS
    assert parent["use_mla"] is True
    assert parent["head_size"] == 576


def test_plain_enum_pickle_would_fail_in_the_spawned_process(child):
    # The control: without mla_plugin's __reduce_ex__ the spawned engine could not
    # even read its config.
    assert "is not a valid AttentionBackendEnum" in child["by_value_load"]


def test_spawned_process_unpickles_the_config(child):
    assert child["mla_plugin_loaded_at_start"] is False
    assert child["mla_plugin_loaded_before_config"] is False
    assert child["backend_name"] == "MLA_XQA_SM120"
    assert child["backend_is_member"] is True
    assert child["backend_class"] == BACKEND_CLASS
    assert child["use_mla"] is True
