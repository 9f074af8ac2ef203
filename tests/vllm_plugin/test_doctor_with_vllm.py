"""`python -m mla_plugin doctor` in fresh processes with the real vLLM installed and no GPU
visible: the versions, the installed entry point and MLA_XQA_SM120 resolving in vLLM (without
initialising CUDA), then `BLOCKED no-gpu` and exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Counts calls of torch.cuda._lazy_init (what every CUDA-initialising torch call goes
# through) over a whole doctor run; with no GPU visible, only the vLLM checks could make one.
COUNTING_CUDA_INIT = textwrap.dedent("""
    import sys
    import torch.cuda
    calls = []
    real_lazy_init = torch.cuda._lazy_init
    def counting_lazy_init(*args, **kwargs):
        calls.append(1)
        return real_lazy_init(*args, **kwargs)
    torch.cuda._lazy_init = counting_lazy_init
    from mla_plugin.__main__ import main
    status = main(sys.argv[1:])
    print(f"cuda lazy init calls: {len(calls)}", file=sys.stderr)
    sys.exit(status)
""")


def _run(argv: list[str], **env_changes) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **env_changes)
    env.pop("VLLM_TARGET_DEVICE", None)  # doctor must work as a user runs it
    env.pop("MLA_PLUGIN_PREBUILT_DIR", None)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def text_run():
    return _run(["-m", "mla_plugin", "doctor"])


@pytest.fixture(scope="module")
def json_run():
    return _run(["-c", COUNTING_CUDA_INIT, "doctor", "--json"])


def test_text_report(text_run, real_vllm):
    assert text_run.returncode == 1, text_run.stderr[-3000:]
    lines = text_run.stdout.splitlines()
    assert lines[0] == "mla_plugin doctor"
    assert f"  vllm         {real_vllm.__version__}" in lines
    assert "  entry point  vllm.general_plugins: mla_xqa_sm120 = mla_plugin:register" in lines
    assert "  backend      MLA_XQA_SM120 -> mla_plugin.backend.XqaMlaBackend" in lines
    torch_line = next(line for line in lines if line.startswith("  torch "))
    assert "(CUDA 13." in torch_line
    assert "GPUs: 0 visible" in lines
    assert lines[-2].startswith("BLOCKED no-gpu: no CUDA GPU visible (CUDA_VISIBLE_DEVICES='')")
    assert lines[-1] == "doctor: BLOCKED (no-gpu)"


def test_json_report_resolves_the_backend_without_initialising_cuda(json_run):
    assert json_run.returncode == 1, json_run.stderr[-3000:]
    data = json.loads(json_run.stdout)  # vLLM's log lines went to stderr, not into the JSON
    assert [p["code"] for p in data["problems"]] == ["no-gpu"]
    assert data["facts"]["backend"] == "mla_plugin.backend.XqaMlaBackend"
    assert data["facts"]["backend_error"] is None
    assert "cuda lazy init calls: 0" in json_run.stderr


def test_vllm_plugins_without_ours_is_named():
    run = _run(["-m", "mla_plugin", "doctor", "--json"], VLLM_PLUGINS="lora_filesystem_resolver")
    assert run.returncode == 1, run.stderr[-3000:]
    data = json.loads(run.stdout)
    assert [p["code"] for p in data["problems"]] == ["backend-unresolved", "no-gpu"]
    message = data["problems"][0]["message"]
    assert "VLLM_PLUGINS='lora_filesystem_resolver' must include mla_xqa_sm120" in message


# doctor with MLA_PLUGIN_REPLACE_TRITON_MLA and GPUs made up at the NVML boundary (torch still
# finds none here, so serving stays BLOCKED no-gpu; the zero-flag facts are NVML's).
WITH_FAKE_NVML = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import fake_nvml
    fake_nvml.install_from_env()
    from mla_plugin.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def _doctor_with_fake_nvml(gpus, **env_changes):
    from pathlib import Path

    from . import fake_nvml

    here = Path(__file__).resolve().parent
    env = dict(os.environ, **env_changes)
    env[fake_nvml.ENV] = fake_nvml.as_env(gpus)
    env["PYTHONPATH"] = str(here.parents[1])
    for name in ("VLLM_TARGET_DEVICE", "MLA_PLUGIN_PREBUILT_DIR", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", WITH_FAKE_NVML.format(here=str(here)), "doctor",
                           "--json"], capture_output=True, text=True, env=env, timeout=300)


def test_doctor_reports_the_applied_variable():
    from . import fake_nvml

    run = _doctor_with_fake_nvml([fake_nvml.RTX_PRO_6000], MLA_PLUGIN_REPLACE_TRITON_MLA="1")
    data = json.loads(run.stdout)
    facts = data["facts"]
    assert facts["replace_triton_mla"] == "1"
    assert facts["zero_flag"]["applied"] is True
    assert facts["zero_flag"]["gpus"] == [{"index": 0, "name": fake_nvml.RTX_PRO_6000[0],
                                           "capability": [12, 0]}]
    assert facts["triton_mla"] == "mla_plugin.backend.XqaMlaBackend"
    assert data["triton_mla"].startswith(
        "-> mla_plugin.backend.XqaMlaBackend (MLA_XQA_SM120); MLA_PLUGIN_REPLACE_TRITON_MLA=1 and "
        "every visible GPU is SM 12.x")
