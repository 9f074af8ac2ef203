"""What bench/device.py does without the GPU it is written for: the profiling sequence (CUDA
graph and sync stubbed, the real torch.profiler on the CPU) and the driver version read."""

import contextlib

import pytest
import torch

from mla_plugin.bench import device as bench_device
from mla_plugin.bench import kernel_times


@pytest.mark.filterwarnings("ignore:CUDA is not available, disabling CUDA profiling")
def test_profiling_captures_inside_the_session_and_flushes_before_each_replay(monkeypatch):
    # the real profiler runs (CPU events only), and breakdown says there was no kernel instead of failing
    calls = []

    class FakeGraph:
        def replay(self):
            calls.append("replay")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext(calls.append("capture")))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    events = bench_device.profile_kernel_events(lambda: calls.append("fn"), replays=2,
                                                flush=lambda: calls.append("flush"))
    assert calls == ["fn", "capture", "fn", "flush", "replay", "flush", "replay"]
    assert kernel_times.breakdown(events, 2)["note"] == "kernel times: the profiler recorded no CUDA kernel events"


def test_driver_version_is_read_from_the_kernel_module_line(tmp_path):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  "
                       "(dvs-builder@U22)  Thu Oct 30 2025\nGCC version:  gcc version 12.3.0\n")
    assert bench_device._driver_version(str(version)) == "580.159.04"
    assert bench_device._driver_version(str(tmp_path / "absent")) is None
