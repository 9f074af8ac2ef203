"""What `doctor` looks at: this machine's facts, gathered without judging them.

Each probe catches its own failure and records it as text, so `doctor` runs (and says what
is missing) on a machine without a GPU, without a CUDA toolkit, without vLLM or even without
torch. verdict.py turns these facts into a verdict; tests build Facts by hand.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mla_plugin.registration import BACKEND_NAME

ENTRY_POINT_GROUP = "vllm.general_plugins"
ENTRY_POINT_NAME = "mla_xqa_sm120"
ENTRY_POINT_VALUE = "mla_plugin:register"


@dataclass
class GpuFacts:
    index: int
    name: str
    capability: tuple[int, int]
    smem_optin: int  # torch.cuda.get_device_properties(i).shared_memory_per_block_optin, bytes
    prebuilt: str | None = None  # a build folder matching this GPU's arch, sources and torch
    prebuilt_error: str | None = None  # why the lookup itself failed


@dataclass
class Facts:
    python: str
    torch: str | None = None  # None: torch does not import
    torch_cuda: str | None = None  # torch.version.cuda; None for a CPU-only torch
    torch_error: str | None = None
    vllm: str | None = None  # None: vLLM does not import
    vllm_error: str | None = None
    cuda_home: str | None = None  # the toolkit a JIT build would use (build.cuda_home())
    nvcc: str | None = None  # that toolkit's nvcc
    nvcc_version: str | None = None
    cuda_visible_devices: str | None = None
    gpus: list[GpuFacts] = field(default_factory=list)
    gpu_error: str | None = None  # why the GPUs could not be listed
    entry_point: str | None = None  # the installed entry point's value, e.g. mla_plugin:register
    backend: str | None = None  # the class MLA_XQA_SM120 resolves to in vLLM
    backend_error: str | None = None
    triton_mla: str | None = None  # the class TRITON_MLA resolves to in vLLM, plugins loaded
    replace_triton_mla: str | None = None  # $MLA_PLUGIN_REPLACE_TRITON_MLA as set
    zero_flag: dict | None = None  # zero_flag.Decision.to_dict(): what register() decided
    allow_sm90: bool = False
    prebuilt_dir: str | None = None  # $MLA_PLUGIN_PREBUILT_DIR
    cache_dir: str | None = None
    builds: list[dict] = field(default_factory=list)  # build.list_builds()

    def to_dict(self) -> dict:
        return asdict(self)


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------- probes
def probe_torch(facts: Facts) -> None:
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install raising anything
        facts.torch_error = _error(exc)
        return
    facts.torch = torch.__version__
    facts.torch_cuda = torch.version.cuda


def probe_vllm(facts: Facts) -> None:
    try:
        import vllm
    except Exception as exc:
        facts.vllm_error = _error(exc)
        return
    facts.vllm = getattr(vllm, "__version__", "unknown")


def nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def probe_toolkit(facts: Facts) -> None:
    """The toolkit a JIT build uses: build.cuda_home()'s nvcc (torch compiles with
    $CUDA_HOME/bin/nvcc, so an nvcc on PATH without its toolkit can't build)."""
    from mla_plugin import build

    facts.cuda_home = build.cuda_home()
    if facts.cuda_home and (Path(facts.cuda_home) / "bin" / "nvcc").is_file():
        facts.nvcc = str(Path(facts.cuda_home) / "bin" / "nvcc")
        facts.nvcc_version = nvcc_version(facts.nvcc)


def probe_gpus(facts: Facts) -> None:
    """Every visible GPU with its capability, opt-in shared memory per block and, for an arch
    the kernel is built for, a matching prebuilt kernel."""
    facts.cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if facts.torch is None:
        facts.gpu_error = "torch does not import, so no GPU can be queried"
        return
    import torch

    try:
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    except Exception as exc:
        facts.gpu_error = _error(exc)
        return
    if not available:
        facts.gpu_error = "torch.cuda.is_available() is False (no NVIDIA driver, or no GPU visible)"
    for index in range(count):
        try:
            props = torch.cuda.get_device_properties(index)
        except Exception as exc:
            facts.gpu_error = f"GPU {index}: {_error(exc)}"
            continue
        gpu = GpuFacts(index, props.name, (props.major, props.minor),
                       int(getattr(props, "shared_memory_per_block_optin", 0) or 0))
        probe_prebuilt(gpu)
        facts.gpus.append(gpu)


def probe_prebuilt(gpu: GpuFacts) -> None:
    from mla_plugin import build

    arch = f"{gpu.capability[0]}.{gpu.capability[1]}a"
    if arch not in build.SUPPORTED_ARCHS:
        return
    try:
        found = build.find_prebuilt(arch)
    except Exception as exc:  # missing csrc/, unreadable cache, ...
        gpu.prebuilt_error = _error(exc)
        return
    gpu.prebuilt = str(found) if found else None


def probe_builds(facts: Facts) -> None:
    from mla_plugin import build

    facts.prebuilt_dir = os.environ.get("MLA_PLUGIN_PREBUILT_DIR")
    facts.cache_dir = str(build.cache_root())
    if facts.torch is None:
        return
    try:
        facts.builds = [{k: b.get(k) for k in ("path", "archs", "torch", "current")}
                        for b in build.list_builds()]
    except Exception:
        facts.builds = []


def probe_entry_point(facts: Facts) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == ENTRY_POINT_NAME:
            facts.entry_point = ep.value
            return


def probe_backend(facts: Facts) -> None:
    """Does MLA_XQA_SM120 resolve the way `vllm serve` resolves it? Load the general plugins
    through vLLM (which calls our entry point), look the name up in vLLM's backend enum and
    import the class it names. Imports only: CUDA is not initialised."""
    if facts.vllm is None:
        return
    try:
        from vllm.plugins import load_general_plugins
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        load_general_plugins()
    except Exception as exc:
        facts.backend_error = f"vLLM's plugin loading failed: {_error(exc)}"
        return
    try:
        facts.triton_mla = AttentionBackendEnum.TRITON_MLA.get_path()
    except Exception as exc:
        facts.triton_mla = f"unresolved ({_error(exc)})"
    member = AttentionBackendEnum.__members__.get(BACKEND_NAME)
    if member is None:
        plugins = os.environ.get("VLLM_PLUGINS")
        facts.backend_error = (
            f"{BACKEND_NAME} is not an AttentionBackendEnum member after "
            f"vllm.plugins.load_general_plugins()"
            + (f" (VLLM_PLUGINS={plugins!r} must include {ENTRY_POINT_NAME})" if plugins is not None else ""))
        return
    try:
        cls = member.get_class()
    except Exception as exc:
        facts.backend_error = f"{BACKEND_NAME} names {member.value}, which does not import: {_error(exc)}"
        return
    if cls.get_name() != BACKEND_NAME:
        facts.backend_error = f"{member.value}.get_name() is {cls.get_name()!r}, expected {BACKEND_NAME!r}"
        return
    facts.backend = member.value


def probe_zero_flag(facts: Facts) -> None:
    """MLA_PLUGIN_REPLACE_TRITON_MLA and what register() made of it in this process (with
    vLLM, probe_backend's plugin loading ran register(); without, the decision alone: NVML,
    asked only when the variable is 1)."""
    from mla_plugin import zero_flag

    facts.replace_triton_mla = os.environ.get(zero_flag.REPLACE_ENV)
    try:
        facts.zero_flag = zero_flag.decision().to_dict()
    except Exception as exc:  # never expected: decide() catches NVML's failures itself
        facts.zero_flag = {"value": facts.replace_triton_mla, "requested": False,
                           "eligible": False, "applied": False, "gpus": [],
                           "reason": f"the decision failed: {_error(exc)}"}


def gather() -> Facts:
    from mla_plugin import refusals

    facts = Facts(python=platform.python_version(), allow_sm90=refusals.sm90_allowed())
    probe_torch(facts)
    probe_vllm(facts)
    probe_entry_point(facts)
    probe_backend(facts)  # before the GPU probe: it must not need CUDA
    probe_zero_flag(facts)
    probe_toolkit(facts)
    probe_builds(facts)
    probe_gpus(facts)
    return facts

