"""doctor's decision logic on made-up machines: which GPUs are served, what blocks serving
(with a named reason), what is only a warning, and the serve command. No GPU, no vLLM."""

from __future__ import annotations

import argparse
import json

import pytest

from mla_plugin import refusals
from mla_plugin.doctor import cli as doctor
from mla_plugin.doctor import verdict as doctor_verdict
from mla_plugin.doctor.facts import ENTRY_POINT_VALUE, Facts, GpuFacts

PREBUILT = "/opt/mla_plugin/kernels/abc-torch2.14.0-sm120a-121a"
NVCC = "/usr/local/cuda/bin/nvcc"
SM12X_SMEM = 101376


def rtx5090(index=0, prebuilt=PREBUILT):
    return GpuFacts(index, "NVIDIA GeForce RTX 5090", (12, 0), SM12X_SMEM, prebuilt)


def gb10(index=0, prebuilt=PREBUILT):
    return GpuFacts(index, "NVIDIA GB10", (12, 1), SM12X_SMEM, prebuilt)


def a100(index=0):
    return GpuFacts(index, "NVIDIA A100-SXM4-80GB", (8, 0), 166912)


def h100(index=0, prebuilt=PREBUILT):
    return GpuFacts(index, "NVIDIA H100 80GB HBM3", (9, 0), 232448, prebuilt)


def machine(*gpus, **changes) -> Facts:
    """A machine with everything installed; `changes` take parts away."""
    facts = Facts(python="3.12.3", torch="2.14.0+cu130", torch_cuda="13.0", vllm="0.33.0",
                  cuda_home="/usr/local/cuda", nvcc=NVCC, nvcc_version="13.0",
                  gpus=list(gpus), entry_point=ENTRY_POINT_VALUE,
                  backend="mla_plugin.backend.XqaMlaBackend")
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def codes(verdict) -> list[str]:
    return [p.code for p in verdict.problems]


def message(verdict, code) -> str:
    return next(p.message for p in verdict.problems if p.code == code)


# ---------------------------------------------------------------------------- one GPU
def test_rtx5090_with_a_prebuilt_kernel_is_ok():
    verdict = doctor_verdict.diagnose(machine(rtx5090()))
    assert verdict.ok and verdict.problems == []
    (gpu,) = verdict.gpus
    assert (gpu.served, gpu.arch, gpu.kernel, gpu.kernel_detail) == (True, "12.0a", "prebuilt", PREBUILT)
    assert verdict.serve_command == "vllm serve <model> --attention-backend MLA_XQA_SM120"
    assert verdict.warnings == []


def test_a100_is_blocked_with_a_reason_naming_it():
    verdict = doctor_verdict.diagnose(machine(a100()))
    assert not verdict.ok and codes(verdict) == ["no-served-gpu"]
    text = message(verdict, "no-served-gpu")
    assert "NVIDIA A100-SXM4-80GB" in text and "compute capability 8.0" in text
    assert "TRITON_MLA" in text
    assert verdict.gpus[0].served is False and verdict.serve_command is None


def test_hopper_needs_the_test_switch():
    blocked = doctor_verdict.diagnose(machine(h100()))
    assert codes(blocked) == ["no-served-gpu"]
    assert f"{refusals.ALLOW_SM90_ENV}=1" in message(blocked, "no-served-gpu")

    allowed = doctor_verdict.diagnose(machine(h100(), allow_sm90=True))
    assert allowed.ok and allowed.gpus[0].arch == "9.0a"
    assert allowed.serve_command.startswith(f"{refusals.ALLOW_SM90_ENV}=1 vllm serve <model>")
    assert any("Hopper for testing" in w for w in allowed.warnings)


def test_gb10_without_a_prebuilt_kernel_builds_it_on_first_use():
    verdict = doctor_verdict.diagnose(machine(gb10(prebuilt=None)))
    assert verdict.ok
    assert verdict.gpus[0].kernel == "jit" and NVCC in verdict.gpus[0].kernel_detail
    assert any("python -m mla_plugin build --arch 12.1a" in w for w in verdict.warnings)


def test_no_kernel_and_no_nvcc_blocks_with_the_build_recipe():
    verdict = doctor_verdict.diagnose(machine(rtx5090(prebuilt=None), nvcc=None, cuda_home=None))
    assert codes(verdict) == ["no-kernel"]
    text = message(verdict, "no-kernel")
    assert "12.0a" in text and "python -m mla_plugin build --arch 12.0a" in text
    assert "MLA_PLUGIN_PREBUILT_DIR" in text
    assert verdict.gpus[0].kernel == "missing"
    assert verdict.warnings == []  # the problem says it once


def test_a_gpu_without_a_kernel_beside_one_with_is_a_warning():
    verdict = doctor_verdict.diagnose(machine(rtx5090(0), gb10(1, prebuilt=None), nvcc=None))
    assert verdict.ok and [g.kernel for g in verdict.gpus] == ["prebuilt", "missing"]
    assert any(w.startswith("GPU 1: none built for sm_121a") for w in verdict.warnings)
    assert verdict.serve_command.startswith("CUDA_VISIBLE_DEVICES=0 vllm serve <model>")


def test_a_prebuilt_kernel_needs_no_nvcc():
    verdict = doctor_verdict.diagnose(machine(rtx5090(), nvcc=None, cuda_home=None))
    assert verdict.ok and verdict.gpus[0].kernel == "prebuilt"


def test_too_little_opt_in_shared_memory_is_not_served():
    small = GpuFacts(0, "NVIDIA RTX 5090 (capped)", (12, 0), 49152, PREBUILT)
    verdict = doctor_verdict.diagnose(machine(small))
    assert codes(verdict) == ["no-served-gpu"]
    reason = verdict.gpus[0].reason
    assert "49152 B" in reason and "101376 B" in reason


def test_an_sm12x_arch_the_kernel_is_not_built_for_is_not_served():
    future = GpuFacts(0, "NVIDIA Future", (12, 7), SM12X_SMEM, None)
    verdict = doctor_verdict.diagnose(machine(future))
    assert codes(verdict) == ["no-served-gpu"]
    reason = verdict.gpus[0].reason
    assert "built for 9.0a, 12.0a, 12.1a only" in reason and "sm_127" in reason


def test_the_served_rule_is_the_backends():
    assert refusals.capability_served(12, 0, allow_sm90=False)
    assert refusals.capability_served(12, 1, allow_sm90=False)
    assert not refusals.capability_served(9, 0, allow_sm90=False)
    assert refusals.capability_served(9, 0, allow_sm90=True)
    assert not refusals.capability_served(8, 0, allow_sm90=True)
    assert not refusals.capability_served(10, 0, allow_sm90=True)


def test_capability_rule_reads_the_environment_when_not_told(monkeypatch):
    monkeypatch.delenv(refusals.ALLOW_SM90_ENV, raising=False)
    assert not refusals.capability_served(9, 0)
    monkeypatch.setenv(refusals.ALLOW_SM90_ENV, "1")
    assert refusals.capability_served(9, 0)


# ---------------------------------------------------------------------------- several GPUs
def test_two_rtx5090s_are_both_listed_and_served_with_tensor_parallel_2():
    facts = machine(rtx5090(0), rtx5090(1))
    verdict = doctor_verdict.diagnose(facts)
    assert verdict.ok and [g.index for g in verdict.gpus] == [0, 1]
    assert all(g.served for g in verdict.gpus)
    assert verdict.serve_command == ("vllm serve <model> --attention-backend MLA_XQA_SM120 "
                                     "--tensor-parallel-size 2")
    text = doctor.render_text(facts, verdict)
    gpu_lines = [line for line in text.splitlines() if line.lstrip().startswith("GPU ")]
    assert len(gpu_lines) == 2
    assert gpu_lines[0].startswith("  GPU 0  NVIDIA GeForce RTX 5090  compute capability 12.0")
    assert gpu_lines[1].startswith("  GPU 1  NVIDIA GeForce RTX 5090")
    assert "GPUs: 2 visible" in text


def test_a_mixed_machine_serves_on_its_sm12x_gpu_only():
    facts = machine(a100(0), rtx5090(1))
    verdict = doctor_verdict.diagnose(facts)
    assert verdict.ok
    assert [g.served for g in verdict.gpus] == [False, True]
    assert verdict.serve_command.startswith("CUDA_VISIBLE_DEVICES=1 vllm serve <model>")
    assert any("GPU 0 (NVIDIA A100-SXM4-80GB) not served" in w and "CUDA_VISIBLE_DEVICES=1" in w
               for w in verdict.warnings)
    text = doctor.render_text(facts, verdict)
    assert "GPU 0  NVIDIA A100-SXM4-80GB  compute capability 8.0" in text
    assert "not served: compute capability 8.0" in text


def test_tensor_parallel_size_is_a_power_of_two():
    verdict = doctor_verdict.diagnose(machine(*(rtx5090(i) for i in range(3))))
    assert verdict.serve_command.endswith("--tensor-parallel-size 2")


# ---------------------------------------------------------------------------- software
def test_no_gpu_names_cuda_visible_devices():
    verdict = doctor_verdict.diagnose(machine(cuda_visible_devices=""))
    assert codes(verdict) == ["no-gpu"]
    assert "CUDA_VISIBLE_DEVICES=''" in message(verdict, "no-gpu")


@pytest.mark.parametrize("changes,code,named", [
    (dict(vllm=None, vllm_error="ModuleNotFoundError: No module named 'vllm'", backend=None),
     "vllm-missing", "vllm==0.33.0"),
    (dict(entry_point=None), "entry-point-missing", "mla_xqa_sm120"),
    (dict(entry_point="other:register"), "entry-point-wrong", "'other:register'"),
    (dict(backend=None, backend_error="MLA_XQA_SM120 is not an AttentionBackendEnum member"),
     "backend-unresolved", "not an AttentionBackendEnum member"),
    (dict(torch_cuda=None), "torch-cpu-only", "CPU-only"),
    (dict(torch=None, torch_error="ModuleNotFoundError: No module named 'torch'"),
     "torch-missing", "No module named 'torch'"),
], ids=["no-vllm", "no-entry-point", "wrong-entry-point", "unresolved", "cpu-torch", "no-torch"])
def test_each_missing_piece_blocks_with_its_own_code(changes, code, named):
    verdict = doctor_verdict.diagnose(machine(rtx5090(), **changes))
    assert codes(verdict) == [code]
    assert named in message(verdict, code)


def test_without_vllm_the_backend_is_not_judged():
    verdict = doctor_verdict.diagnose(machine(rtx5090(), vllm=None, vllm_error="x", backend=None))
    assert "backend-unresolved" not in codes(verdict)


def test_another_vllm_version_is_a_warning():
    verdict = doctor_verdict.diagnose(machine(rtx5090(), vllm="0.34.1"))
    assert verdict.ok
    assert any("vLLM 0.34.1" in w and "0.33.0" in w for w in verdict.warnings)


def test_stale_builds_are_reported():
    stale = {"path": "/cache/old-torch2.13.0-sm120a", "archs": ["12.0a"], "torch": "2.13.0",
             "current": False}
    verdict = doctor_verdict.diagnose(machine(rtx5090(), builds=[stale]))
    assert any("/cache/old-torch2.13.0-sm120a" in w for w in verdict.warnings)


# ---------------------------------------------------------------------------- output
def test_json_output_carries_facts_and_verdict():
    facts = machine(rtx5090(0), a100(1))
    data = json.loads(doctor.render_json(facts, doctor_verdict.diagnose(facts)))
    assert data["ok"] is True and data["problems"] == []
    assert [g["name"] for g in data["gpus"]] == ["NVIDIA GeForce RTX 5090", "NVIDIA A100-SXM4-80GB"]
    assert data["gpus"][0]["smem_optin"] == 101376 and data["gpus"][1]["served"] is False
    assert data["facts"]["vllm"] == "0.33.0" and data["facts"]["nvcc_version"] == "13.0"
    assert data["serve_command"].startswith("CUDA_VISIBLE_DEVICES=0 vllm serve")


def test_text_output_names_every_problem():
    facts = machine(a100(), vllm=None, vllm_error="ModuleNotFoundError: x", backend=None)
    text = doctor.render_text(facts, doctor_verdict.diagnose(facts))
    lines = text.splitlines()
    assert lines[-1] == "doctor: BLOCKED (vllm-missing, no-served-gpu)"
    assert any(line.startswith("BLOCKED vllm-missing: ") for line in lines)
    assert any(line.startswith("BLOCKED no-served-gpu: ") for line in lines)
    assert "serve:" not in text


@pytest.mark.parametrize("facts,status,last", [
    (machine(rtx5090()), 0, "doctor: OK"),
    (machine(a100()), 1, "doctor: BLOCKED (no-served-gpu)"),
])
def test_main_exit_status(monkeypatch, capsys, facts, status, last):
    monkeypatch.setattr(doctor.doctor_facts, "gather", lambda: facts)
    assert doctor.main(argparse.Namespace(json=False)) == status
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == last
    assert doctor.main(argparse.Namespace(json=True)) == status
    assert json.loads(capsys.readouterr().out)["ok"] is (status == 0)


# ---------------------------------------------------------------------------- zero flag
VLLM_TRITON = "vllm.v1.attention.backends.mla.triton_mla.TritonMLABackend"


def decision(value="1", requested=True, eligible=True, applied=True, reason="the reason"):
    return {"value": value, "requested": requested, "eligible": eligible, "applied": applied,
            "reason": reason, "gpus": []}


def test_unset_variable_on_an_sm12x_machine_offers_the_no_flag_command():
    facts = machine(rtx5090(0), rtx5090(1), triton_mla=VLLM_TRITON,
                    zero_flag=decision(None, False, False, False, "not set"))
    verdict = doctor_verdict.diagnose(facts)
    assert verdict.triton_mla == (f"-> {VLLM_TRITON} (vLLM's own); MLA_PLUGIN_REPLACE_TRITON_MLA "
                                  f"is not set; with MLA_PLUGIN_REPLACE_TRITON_MLA=1 vLLM picks "
                                  f"MLA_XQA_SM120 here without --attention-backend (every visible "
                                  f"GPU is SM 12.x)")
    assert verdict.zero_flag_command == ("MLA_PLUGIN_REPLACE_TRITON_MLA=1 vllm serve <model> "
                                         "--tensor-parallel-size 2")
    lines = doctor.render_text(facts, verdict).splitlines()
    assert f"  TRITON_MLA   {verdict.triton_mla}" in lines
    assert lines[-3:] == [
        "serve: vllm serve <model> --attention-backend MLA_XQA_SM120 --tensor-parallel-size 2",
        "   or: MLA_PLUGIN_REPLACE_TRITON_MLA=1 vllm serve <model> --tensor-parallel-size 2",
        "doctor: OK"]
    assert verdict.warnings == []


def test_applied_variable_shows_triton_mla_as_ours():
    facts = machine(gb10(), triton_mla="mla_plugin.backend.XqaMlaBackend",
                    zero_flag=decision(reason="MLA_PLUGIN_REPLACE_TRITON_MLA=1 and every visible "
                                              "GPU is SM 12.x (GPU 0 NVIDIA GB10: 12.1): ..."))
    verdict = doctor_verdict.diagnose(facts)
    assert verdict.triton_mla.startswith("-> mla_plugin.backend.XqaMlaBackend (MLA_XQA_SM120); "
                                         "MLA_PLUGIN_REPLACE_TRITON_MLA=1 and every visible GPU")
    assert verdict.warnings == [] and verdict.ok


def test_requested_but_refused_is_a_warning_with_the_reason():
    reason = ("MLA_PLUGIN_REPLACE_TRITON_MLA=1, but not every visible GPU is SM 12.x (GPU 0 "
              "NVIDIA H100 80GB HBM3: 9.0): TRITON_MLA left as vLLM's own")
    facts = machine(h100(), allow_sm90=True, triton_mla=VLLM_TRITON,
                    zero_flag=decision(eligible=False, applied=False, reason=reason))
    verdict = doctor_verdict.diagnose(facts)
    assert reason in verdict.warnings
    assert verdict.triton_mla == f"-> {VLLM_TRITON} (vLLM's own); {reason}"
    assert verdict.zero_flag_command is None  # Hopper never gets it


def test_a_value_other_than_1_is_a_warning():
    facts = machine(rtx5090(), triton_mla=VLLM_TRITON,
                    zero_flag=decision("yes", False, False, False, "'yes' is neither 1 nor 0"))
    assert "'yes' is neither 1 nor 0" in doctor_verdict.diagnose(facts).warnings


def test_mixed_machine_gets_no_no_flag_command():
    facts = machine(a100(0), rtx5090(1), triton_mla=VLLM_TRITON,
                    zero_flag=decision(None, False, False, False, "not set"))
    verdict = doctor_verdict.diagnose(facts)
    assert verdict.ok and verdict.zero_flag_command is None
    assert verdict.triton_mla.endswith("MLA_PLUGIN_REPLACE_TRITON_MLA is not set")


def test_without_vllm_triton_mla_is_not_checked():
    facts = machine(rtx5090(), vllm=None, vllm_error="x", backend=None,
                    zero_flag=decision(applied=False, reason="MLA_PLUGIN_REPLACE_TRITON_MLA=1 and ..."))
    verdict = doctor_verdict.diagnose(facts)
    assert verdict.triton_mla.startswith("not checked (no vLLM); MLA_PLUGIN_REPLACE_TRITON_MLA=1")
    assert codes(verdict) == ["vllm-missing"] and verdict.warnings == []
