"""MLA_PLUGIN_REPLACE_TRITON_MLA=1 in the test process, against the real vLLM registry, with
the GPUs made up at the NVML boundary (tests/vllm_plugin/fake_nvml.py): register() points
TRITON_MLA at our backend only on all-SM12x machines, once, says so in one log line, and
otherwise changes nothing. (vLLM's own selection and the spawn/pickle path run in fresh
processes: test_zero_flag_serve_path.py.)"""

from __future__ import annotations

import logging

import pytest

import mla_plugin
from mla_plugin import zero_flag

from . import fake_nvml
from .fake_nvml import A100, B200, GB10, H200, RTX_5090, RTX_PRO_6000

OURS = "mla_plugin.backend.XqaMlaBackend"
VLLM_TRITON = "vllm.v1.attention.backends.mla.triton_mla.TritonMLABackend"


def _triton():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum.TRITON_MLA


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name in (zero_flag.REPLACE_ENV, "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(name, raising=False)
    zero_flag.reset()
    _triton().clear_override()
    yield
    zero_flag.reset()
    _triton().clear_override()


@pytest.fixture
def log_lines():
    """What zero_flag logs (vLLM's "vllm" logger does not propagate to caplog's root)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    old_level = zero_flag.logger.level
    zero_flag.logger.addHandler(handler)
    zero_flag.logger.setLevel(logging.DEBUG)
    yield records
    zero_flag.logger.removeHandler(handler)
    zero_flag.logger.setLevel(old_level)


def _said(records, level=None) -> list[str]:
    return [r.getMessage() for r in records if level is None or r.levelno == level]


@pytest.mark.parametrize("machine", [[RTX_PRO_6000], [RTX_5090, RTX_5090], [GB10],
                                     [RTX_PRO_6000, GB10]], ids=["pro6000", "2x5090", "gb10", "mixed-12x"])
def test_all_sm12x_points_triton_mla_at_our_backend(monkeypatch, log_lines, machine):
    fake_nvml.install(monkeypatch, machine)
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    mla_plugin.register()
    assert _triton().get_path() == OURS
    assert _triton().get_class().get_name() == "MLA_XQA_SM120"
    (line,) = _said(log_lines)
    assert line.startswith("mla_plugin: MLA_PLUGIN_REPLACE_TRITON_MLA=1 and every visible GPU is "
                           "SM 12.x (GPU 0 ")
    assert f"TRITON_MLA now runs {OURS} (MLA_XQA_SM120), no --attention-backend needed" in line
    assert log_lines[0].levelno == logging.INFO


@pytest.mark.parametrize("machine,named", [
    ([H200], "GPU 0 NVIDIA H200: 9.0"),
    ([B200, B200], "GPU 0 NVIDIA B200: 10.0, GPU 1 NVIDIA B200: 10.0"),
    ([RTX_PRO_6000, A100], "GPU 1 NVIDIA A100-SXM4-80GB: 8.0"),
], ids=["h200", "2xb200", "pro6000+a100"])
def test_any_other_gpu_keeps_vllms_triton_mla(monkeypatch, log_lines, machine, named):
    fake_nvml.install(monkeypatch, machine)
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    mla_plugin.register()
    assert _triton().get_path() == VLLM_TRITON and not _triton().is_overridden()
    (line,) = _said(log_lines, logging.WARNING)
    assert "MLA_PLUGIN_REPLACE_TRITON_MLA=1, but not every visible GPU is SM 12.x" in line
    assert named in line and "TRITON_MLA left as vLLM's own" in line


def test_cuda_visible_devices_is_honoured(monkeypatch):
    fake_nvml.install(monkeypatch, [A100, RTX_PRO_6000])
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    mla_plugin.register()
    assert _triton().get_path() == VLLM_TRITON
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    mla_plugin.register()
    assert _triton().get_path() == OURS


def test_without_the_variable_nothing_changes_and_nvml_is_not_asked(monkeypatch, log_lines):
    fake = fake_nvml.install(monkeypatch, [RTX_PRO_6000])
    mla_plugin.register()
    assert _triton().get_path() == VLLM_TRITON and not _triton().is_overridden()
    assert fake.init_calls == 0
    assert _said(log_lines, logging.WARNING) == [] and _said(log_lines, logging.INFO) == []


def test_no_driver_keeps_vllms_triton_mla_and_says_why(monkeypatch, log_lines):
    fake_nvml.install(monkeypatch, [], no_driver=True)
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    mla_plugin.register()
    assert _triton().get_path() == VLLM_TRITON
    (line,) = _said(log_lines, logging.WARNING)
    assert "MLA_PLUGIN_REPLACE_TRITON_MLA=1, but NVML does not answer" in line


def test_register_stays_idempotent_and_asks_nvml_once(monkeypatch, log_lines):
    from vllm.v1.attention.backends import registry

    fake = fake_nvml.install(monkeypatch, [RTX_PRO_6000])
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    mla_plugin.register()
    member = registry.AttentionBackendEnum["MLA_XQA_SM120"]
    names = list(registry.AttentionBackendEnum.__members__)
    overrides = dict(registry._ATTN_OVERRIDES)
    for _ in range(4):
        mla_plugin.register()
    assert fake.init_calls == 1
    assert registry.AttentionBackendEnum["MLA_XQA_SM120"] is member
    assert list(registry.AttentionBackendEnum.__members__) == names
    assert dict(registry._ATTN_OVERRIDES) == overrides
    assert len(_said(log_lines)) == 1


def test_another_plugins_override_is_left_alone(monkeypatch, log_lines):
    from vllm.v1.attention.backends.registry import register_backend

    fake_nvml.install(monkeypatch, [RTX_PRO_6000])
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    register_backend(_triton(), "someone.else.TritonMLA")
    mla_plugin.register()
    assert _triton().get_path() == "someone.else.TritonMLA"
    (line,) = _said(log_lines, logging.WARNING)
    assert "TRITON_MLA is already overridden to 'someone.else.TritonMLA' (by another plugin)" in line


def test_triton_mla_keeps_pickling_by_value(monkeypatch):
    import pickle

    fake_nvml.install(monkeypatch, [RTX_PRO_6000])
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    mla_plugin.register()
    payload = pickle.dumps(_triton())
    assert b"restore_backend" not in payload  # a process without mla_plugin can read it
    assert pickle.loads(payload) is _triton()


def test_refusals_say_how_to_get_vllms_triton_mla_back(monkeypatch, tiny_model_config):
    import torch
    from vllm.platforms.interface import DeviceCapability

    from mla_plugin.backend import XqaMlaBackend

    def reasons():
        return XqaMlaBackend.validate_configuration(
            head_size=512, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=None,
            use_mla=True, has_sink=False, use_sparse=False, use_mm_prefix=False,
            use_per_head_quant_scales=False, device_capability=DeviceCapability(12, 0),
            attn_type="decoder")

    (plain,) = reasons()
    assert "MLA_PLUGIN_REPLACE_TRITON_MLA" not in plain
    fake_nvml.install(monkeypatch, [RTX_PRO_6000])
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    mla_plugin.register()
    (replaced,) = reasons()
    assert replaced.startswith(plain)
    assert ("in this process TRITON_MLA runs MLA_XQA_SM120, because MLA_PLUGIN_REPLACE_TRITON_MLA=1: "
            "unset MLA_PLUGIN_REPLACE_TRITON_MLA to get vLLM's own TRITON_MLA back") in replaced


def test_doctor_reports_why_the_variable_was_not_applied(monkeypatch):
    from mla_plugin.doctor import facts as doctor_facts
    from mla_plugin.doctor import verdict as doctor_verdict

    fake_nvml.install(monkeypatch, [H200])
    monkeypatch.setenv(zero_flag.REPLACE_ENV, "1")
    facts = doctor_facts.gather()
    assert facts.replace_triton_mla == "1"
    assert facts.triton_mla == VLLM_TRITON
    assert facts.zero_flag["requested"] is True and facts.zero_flag["applied"] is False
    reason = facts.zero_flag["reason"]
    assert "not every visible GPU is SM 12.x (GPU 0 NVIDIA H200: 9.0)" in reason
    verdict = doctor_verdict.diagnose(facts)
    assert reason in verdict.warnings
    assert verdict.triton_mla == f"-> {VLLM_TRITON} (vLLM's own); {reason}"
