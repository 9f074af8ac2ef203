"""The GPU side of `doctor --run` (selftest.Runner): the kernel load, the cases through
mla_plugin.ops.mla_decode, and the timings through the bench's own pieces
(bench.inputs.make_inputs, bench.kernels.prepare_ours / prepare_triton / load_triton_mla,
bench.device.time_us_graph and L2Flusher), so there is one timer in the project."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import time

import torch

from mla_plugin import build
from mla_plugin.doctor import cases as doctor_cases
from mla_plugin.doctor.selftest import TIMING_REPS, TIMING_WARMUP, Runner, SelfTestCase


def driver_version() -> str | None:
    """The NVIDIA driver's version: NVML first, then /proc (Linux)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        pass
    try:
        with open("/proc/driver/nvidia/version") as f:
            match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", f.read())
        return match.group(1) if match else None
    except OSError:
        return None


def package_version() -> str:
    try:
        return importlib.metadata.version("mla_plugin")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: running from a checkout)"


class CudaRunner(Runner):
    def __init__(self):
        self._flusher = None
        self._flusher_index = None
        self._loaded_arch = None

    def versions(self) -> dict:
        import mla_plugin

        try:
            import triton

            triton_version = triton.__version__
        except Exception as exc:
            triton_version = f"not importable ({type(exc).__name__}: {exc})"
        try:
            sources = build.source_hash()
        except Exception as exc:
            sources = f"unknown ({type(exc).__name__}: {exc})"
        return {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,  # the CUDA torch is built with
            "driver": driver_version(),
            "triton": triton_version,
            "mla_plugin": package_version(),
            "mla_plugin_path": os.path.dirname(os.path.abspath(mla_plugin.__file__)),
            "kernel_sources": sources,
        }

    def describe(self, index: int) -> dict:
        from mla_plugin.bench.device import describe_device

        facts = describe_device(torch.device("cuda", index))
        props = torch.cuda.get_device_properties(index)
        return {"name": facts["name"], "capability": facts["capability"],
                "sm_count": facts["sm_count"], "memory_bytes": facts["memory_bytes"],
                "l2_bytes": facts["l2_bytes"],
                "smem_optin": int(getattr(props, "shared_memory_per_block_optin", 0) or 0)}

    def load_kernel(self, index: int) -> dict:
        with torch.cuda.device(index):
            arch = build.arch_of_device()
            if self._loaded_arch is not None and arch != self._loaded_arch:
                raise RuntimeError(
                    f"this GPU is sm_{arch.replace('.', '')}, but this process already loaded the "
                    f"kernel built for sm_{self._loaded_arch.replace('.', '')} (one build per "
                    f"process): run doctor --run again with CUDA_VISIBLE_DEVICES={index}")
            prebuilt = build.find_prebuilt(arch)
            start = time.monotonic()
            build.load_extension(verbose=False)
            seconds = round(time.monotonic() - start, 1)
        first = self._loaded_arch is None
        self._loaded_arch = arch
        if not first:
            source = "already loaded (same build as the GPU before)"
        elif prebuilt is not None:
            source = f"prebuilt, {prebuilt}"
        else:
            source = f"JIT-built for sm_{arch.replace('.', '')} into {build.cache_root()}"
        return {"source": source, "arch": arch, "seconds": seconds,
                "detail": f"{seconds:.1f} s"}

    def check_case(self, index: int, case: SelfTestCase) -> dict:
        from mla_plugin.ops import mla_decode
        from mla_plugin.reference import mla_decode_reference

        device = torch.device("cuda", index)
        with torch.cuda.device(index):
            return doctor_cases.check_case(case, device, mla_decode, mla_decode_reference,
                                           sync=lambda: torch.cuda.synchronize(device))

    def load_triton(self):
        from mla_plugin.bench.kernels import load_triton_mla

        return load_triton_mla()

    def time_shape(self, index: int, shape, triton) -> dict:
        from mla_plugin.bench.device import L2Flusher, time_us_graph
        from mla_plugin.bench.inputs import make_inputs
        from mla_plugin.bench.kernels import prepare_ours, prepare_triton
        from mla_plugin.bench.roofline import median
        from mla_plugin.ops import mla_decode

        device = torch.device("cuda", index)
        with torch.cuda.device(index):
            if self._flusher_index != index:
                self._flusher, self._flusher_index = L2Flusher(device), index
            inputs = make_inputs(shape, device, seed=0)
            ours = prepare_ours(mla_decode, inputs)
            row = {"ours_us": median(time_us_graph(ours.run, reps=TIMING_REPS,
                                                   warmup=TIMING_WARMUP, flush=self._flusher))}
            if triton is not None:
                try:
                    sm_count = torch.cuda.get_device_properties(index).multi_processor_count
                    contender = prepare_triton(triton, inputs, sm_count)
                    row["triton_us"] = median(time_us_graph(contender.run, reps=TIMING_REPS,
                                                            warmup=TIMING_WARMUP,
                                                            flush=self._flusher))
                except Exception as exc:  # reported; TRITON_MLA's failure is not ours
                    row["triton_error"] = f"{type(exc).__name__}: {exc}"
            del inputs, ours
            torch.cuda.empty_cache()
        return row
