"""Shared pytest set-up: GPU tests skip cleanly on machines that can't run them (unless the
emulated-GPU mode of tests/gpu/conftest.py runs them on the CPU against an emulated kernel)."""

from __future__ import annotations

import os

import pytest

EMULATED_GPU_ENV = "MLA_PLUGIN_TEST_EMULATED_GPU"


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_collection_modifyitems(config, items):
    gpu_items = [i for i in items if "gpu" in i.keywords or "multigpu" in i.keywords]
    if not gpu_items:
        return
    count = _cuda_device_count()
    for item in gpu_items:
        if "multigpu" in item.keywords and count < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs 2 CUDA GPUs, found {count}"))
        elif "gpu" in item.keywords and count < 1 and not os.environ.get(EMULATED_GPU_ENV):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU, found none"))
