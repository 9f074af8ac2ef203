"""MLA_PLUGIN_REPLACE_TRITON_MLA's decision on made-up machines (no vLLM, no NVML): which
GPUs count as visible, and when the override is made."""

from __future__ import annotations

import pytest

from mla_plugin import zero_flag
from mla_plugin.zero_flag import NvmlUnavailable, SeenGpu


def gpus(*caps):
    names = {12: "NVIDIA RTX PRO 6000", 9: "NVIDIA H200", 10: "NVIDIA B200", 8: "NVIDIA A100"}
    return lambda: [SeenGpu(i, names[c[0]], c) for i, c in enumerate(caps)]


@pytest.mark.parametrize("cvd,count,expected", [
    (None, 3, [0, 1, 2]),
    ("", 3, []),
    ("1", 3, [1]),
    ("2,0", 3, [2, 0]),
    (" 1 , 2 ", 3, [1, 2]),
    ("0,-1,2", 3, [0]),  # CUDA stops at the first invalid index
    ("0,7,1", 3, [0]),
    ("0,0", 3, [0]),
    ("GPU-8e2f5c1a-0000", 3, None),  # UUIDs: every GPU is checked instead
    ("0,MIG-1234", 3, None),
])
def test_visible_indices_read_as_cuda_reads_them(cvd, count, expected):
    assert zero_flag.visible_indices(cvd, count) == expected


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_the_variable_nvml_is_not_asked(value):
    def must_not_run():
        raise AssertionError("NVML asked without the variable")

    d = zero_flag.decide(value, None, None, list_gpus=must_not_run)
    assert not d.requested and not d.eligible
    assert d.reason == "MLA_PLUGIN_REPLACE_TRITON_MLA is not set: TRITON_MLA is vLLM's own"


def test_a_value_other_than_1_is_ignored_and_said():
    d = zero_flag.decide("yes", None, None, list_gpus=gpus((12, 0)))
    assert not d.requested and not d.eligible
    assert "MLA_PLUGIN_REPLACE_TRITON_MLA='yes' is neither 1 nor 0: ignored" in d.reason


@pytest.mark.parametrize("caps", [[(12, 0)], [(12, 1)], [(12, 0), (12, 0)], [(12, 0), (12, 1)]])
def test_all_sm12x_is_eligible(caps):
    d = zero_flag.decide("1", None, None, list_gpus=gpus(*caps))
    assert d.requested and d.eligible and not d.applied
    assert d.reason.startswith("MLA_PLUGIN_REPLACE_TRITON_MLA=1 and every visible GPU is SM 12.x")
    assert [g.capability for g in d.gpus] == caps


@pytest.mark.parametrize("caps,named", [
    ([(9, 0)], "GPU 0 NVIDIA H200: 9.0"),
    ([(10, 0)], "GPU 0 NVIDIA B200: 10.0"),
    ([(12, 0), (8, 0)], "GPU 1 NVIDIA A100: 8.0"),
])
def test_one_other_gpu_keeps_vllms_triton_mla(caps, named):
    d = zero_flag.decide("1", None, None, list_gpus=gpus(*caps))
    assert d.requested and not d.eligible
    assert "not every visible GPU is SM 12.x" in d.reason and named in d.reason
    assert d.reason.endswith("TRITON_MLA left as vLLM's own (MLA_XQA_SM120 serves SM120/SM121)")


def test_hopper_is_not_eligible_even_with_allow_sm90(monkeypatch):
    monkeypatch.setenv("MLA_PLUGIN_ALLOW_SM90", "1")
    assert not zero_flag.decide("1", None, None, list_gpus=gpus((9, 0))).eligible


def test_cuda_visible_devices_hides_the_other_gpu_given_pci_order():
    machine = gpus((12, 0), (8, 0))
    d = zero_flag.decide("1", "0", "PCI_BUS_ID", list_gpus=machine)
    assert d.eligible and [g.index for g in d.gpus] == [0]
    assert not zero_flag.decide("1", "1", "PCI_BUS_ID", list_gpus=machine).eligible


def test_index_on_a_mixed_machine_without_pci_order_is_not_trusted():
    d = zero_flag.decide("1", "0", None, list_gpus=gpus((12, 0), (8, 0)))
    assert not d.eligible
    assert "set CUDA_DEVICE_ORDER=PCI_BUS_ID" in d.reason


def test_index_on_a_uniform_machine_needs_no_pci_order():
    assert zero_flag.decide("1", "1", None, list_gpus=gpus((12, 0), (12, 0))).eligible


def test_uuids_check_every_gpu():
    assert zero_flag.decide("1", "GPU-abc", None, list_gpus=gpus((12, 0), (12, 0))).eligible
    assert not zero_flag.decide("1", "GPU-abc", None, list_gpus=gpus((12, 0), (9, 0))).eligible


def test_nothing_visible():
    d = zero_flag.decide("1", "", None, list_gpus=gpus((12, 0)))
    assert not d.eligible
    assert "no GPU is visible (CUDA_VISIBLE_DEVICES='')" in d.reason


def test_nvml_failure_is_said():
    def broken():
        raise NvmlUnavailable("NVML does not answer (NVMLError_DriverNotLoaded: Driver Not Loaded; "
                              "no NVIDIA driver?)")

    d = zero_flag.decide("1", None, None, list_gpus=broken)
    assert d.requested and not d.eligible
    assert d.reason == ("MLA_PLUGIN_REPLACE_TRITON_MLA=1, but NVML does not answer "
                        "(NVMLError_DriverNotLoaded: Driver Not Loaded; no NVIDIA driver?): "
                        "TRITON_MLA left as vLLM's own")


def test_importing_zero_flag_imports_no_torch_vllm_or_pynvml():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import mla_plugin.zero_flag, mla_plugin.registration; "
            "print(sorted(m for m in ('torch', 'vllm', 'pynvml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stderr
