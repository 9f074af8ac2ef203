"""`python -m mla_plugin doctor` in fresh processes on this GPU-less machine, with vLLM made
unimportable: it still runs, names what blocks serving and exits 1. (The same command with
vLLM installed is tested in tests/vllm_plugin/test_doctor_with_vllm.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter where `import vllm` fails as if vLLM were not installed; afterwards it
# checks that doctor imported no part of vLLM.
WITHOUT_VLLM = textwrap.dedent("""
    import sys
    sys.modules["vllm"] = None
    from mla_plugin.__main__ import main
    status = main(sys.argv[1:])
    leaked = [n for n, m in sys.modules.items() if m is not None and n.split(".")[0] == "vllm"]
    print(f"vllm modules imported: {leaked}", file=sys.stderr)
    sys.exit(status)
""")


def _doctor_without_vllm(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("MLA_PLUGIN_PREBUILT_DIR", None)
    return subprocess.run([sys.executable, "-c", WITHOUT_VLLM, "doctor", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def text_run():
    return _doctor_without_vllm()


@pytest.fixture(scope="module")
def json_run():
    return _doctor_without_vllm("--json")


def test_text_report_without_vllm_and_without_gpu(text_run):
    assert text_run.returncode == 1, text_run.stderr[-3000:]
    lines = text_run.stdout.splitlines()
    assert lines[0] == "mla_plugin doctor"
    field = {line.split()[0]: line for line in lines[1:8]}
    assert field["python"].split()[1] == ".".join(map(str, sys.version_info[:3]))
    assert field["torch"].split()[1].startswith("2.")
    assert "not importable" in field["vllm"]
    assert field["entry"] == "  entry point  vllm.general_plugins: mla_xqa_sm120 = mla_plugin:register"
    assert field["backend"] == "  backend      not checked (no vLLM)"
    assert "GPUs: 0 visible" in lines
    assert any(line.startswith("BLOCKED vllm-missing: vLLM does not import") for line in lines)
    assert any(line.startswith("BLOCKED no-gpu: no CUDA GPU visible (CUDA_VISIBLE_DEVICES='')")
               for line in lines)
    assert lines[-1] == "doctor: BLOCKED (vllm-missing, no-gpu)"
    assert "vllm modules imported: []" in text_run.stderr


def test_json_report_without_vllm_and_without_gpu(json_run):
    assert json_run.returncode == 1, json_run.stderr[-3000:]
    data = json.loads(json_run.stdout)
    assert data["ok"] is False and data["serve_command"] is None
    assert [p["code"] for p in data["problems"]] == ["vllm-missing", "no-gpu"]
    assert data["gpus"] == []
    facts = data["facts"]
    assert facts["vllm"] is None and "vllm" in facts["vllm_error"]
    assert facts["entry_point"] == "mla_plugin:register"
    assert facts["cuda_visible_devices"] == ""
    assert "vllm modules imported: []" in json_run.stderr


def test_run_without_a_gpu_says_so_and_exits_1(tmp_path):
    report = tmp_path / "report.json"
    run = _doctor_without_vllm("--run", "--json", str(report))
    assert run.returncode == 1, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == "doctor --run: NOT RUN (no-gpu)"
    assert lines[-2].startswith("self-test not run: no CUDA GPU visible (CUDA_VISIBLE_DEVICES='')")
    data = json.loads(report.read_text())
    assert data["self_test"]["status"] == "not-run" and data["self_test"]["exit_status"] == 1
    assert [p["code"] for p in data["problems"]] == ["vllm-missing", "no-gpu"]
    assert "vllm modules imported: []" in run.stderr
