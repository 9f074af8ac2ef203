"""GPUs made up at the NVML boundary: the pynvml functions that mla_plugin.zero_flag and
vLLM's NvmlCudaPlatform call, answering for a list of (name, (major, minor)). Both modules
are patched: nvidia-ml-py's pynvml (ours) and vLLM's vendored copy, vllm.third_party.pynvml.

In a test: ``install(monkeypatch, [("NVIDIA RTX PRO 6000", (12, 0))])``. In a probe process:
``install_from_env()`` reads the same list as JSON from $MLA_TEST_FAKE_NVML (or makes
nvmlInit fail like a machine without a driver when the variable is "no-driver").
"""

from __future__ import annotations

import json
import os

import pynvml

ENV = "MLA_TEST_FAKE_NVML"
RTX_PRO_6000 = ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", (12, 0))
RTX_5090 = ("NVIDIA GeForce RTX 5090", (12, 0))
GB10 = ("NVIDIA GB10", (12, 1))
H200 = ("NVIDIA H200", (9, 0))
B200 = ("NVIDIA B200", (10, 0))
A100 = ("NVIDIA A100-SXM4-80GB", (8, 0))


class FakeNvml:
    def __init__(self, gpus, no_driver: bool = False):
        self.gpus = [(str(name), tuple(cap)) for name, cap in gpus]
        self.no_driver = no_driver
        self.init_calls = 0

    def functions(self) -> dict:
        def nvmlInit(*args, **kwargs):
            self.init_calls += 1
            if self.no_driver:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

        def handle(index):
            if not 0 <= index < len(self.gpus):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return ("fake-gpu", index)

        return {
            "nvmlInit": nvmlInit,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": handle,
            "nvmlDeviceGetName": lambda h: self.gpus[h[1]][0],
            "nvmlDeviceGetCudaComputeCapability": lambda h: self.gpus[h[1]][1],
            "nvmlDeviceGetUUID": lambda h: f"GPU-fake-{h[1]}",
            "nvmlSystemGetDriverVersion": lambda: "580.00.00",
        }


def _modules() -> list:
    modules = [pynvml]
    try:
        import vllm.third_party.pynvml as vllm_pynvml
    except ImportError:
        return modules
    return modules + [vllm_pynvml]


def install(monkeypatch, gpus, no_driver: bool = False) -> FakeNvml:
    fake = FakeNvml(gpus, no_driver)
    for module in _modules():
        for name, fn in fake.functions().items():
            monkeypatch.setattr(module, name, fn)
    return fake


def install_from_env() -> FakeNvml | None:
    text = os.environ.get(ENV)
    if text is None:
        return None
    fake = FakeNvml([], no_driver=True) if text == "no-driver" else FakeNvml(json.loads(text))
    for module in _modules():
        for name, fn in fake.functions().items():
            setattr(module, name, fn)
    return fake


def as_env(gpus) -> str:
    return json.dumps([[name, list(cap)] for name, cap in gpus])
