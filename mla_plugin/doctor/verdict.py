"""`doctor`'s judgement: from Facts (facts.py) to what blocks serving, what to watch,
and the serve command. Pure: no torch, no vLLM, no CUDA, so it is tested with made-up GPUs.

A GPU is served when the backend's rule accepts its compute capability
(refusals.capability_served: SM 12.x, Hopper 9.0 only with MLA_PLUGIN_ALLOW_SM90=1), the
kernel is built for its arch (build.SUPPORTED_ARCHS), and it grants a block the kernel's
shared memory (build.SMEM_LIMIT_BYTES, 101376 B) on opt-in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mla_plugin.doctor.facts import (ENTRY_POINT_GROUP, ENTRY_POINT_NAME, ENTRY_POINT_VALUE,
                                     Facts, GpuFacts)
from mla_plugin.build import SMEM_LIMIT_BYTES, SUPPORTED_ARCHS
from mla_plugin.refusals import ALLOW_SM90_ENV, BACKEND, capability_served
from mla_plugin.zero_flag import REPLACE_ENV

OUR_CLASS = "mla_plugin.backend.XqaMlaBackend"

SUPPORTED_VLLM = "0.33.0"
REQUIRED_SMEM_OPTIN = SMEM_LIMIT_BYTES  # shared memory per block the kernel is sized for (99 KiB)


@dataclass
class GpuVerdict:
    index: int
    name: str
    capability: str  # "12.0"
    arch: str  # "12.0a"
    smem_optin: int
    served: bool
    reason: str | None  # why not, when not served
    kernel: str  # "prebuilt", "jit", "missing" or "-" (not served)
    kernel_detail: str


@dataclass
class Problem:
    code: str  # stable, for scripts: no-gpu, no-served-gpu, vllm-missing, ...
    message: str


@dataclass
class Verdict:
    gpus: list[GpuVerdict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    serve_command: str | None = None
    # What TRITON_MLA resolves to and why (MLA_PLUGIN_REPLACE_TRITON_MLA), one line.
    triton_mla: str = ""
    # The no-flag way to serve, when every visible GPU is SM 12.x: None otherwise.
    zero_flag_command: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


# ------------------------------------------------------------------------------- GPUs
def why_not_served(gpu: GpuFacts, allow_sm90: bool) -> str | None:
    major, minor = gpu.capability
    arch = f"{major}.{minor}a"
    if (major, minor) == (9, 0) and not allow_sm90:
        return (f"Hopper (compute capability 9.0) is served only on test machines with "
                f"{ALLOW_SM90_ENV}=1; {BACKEND} is for SM120/SM121")
    if not capability_served(major, minor, allow_sm90):
        return (f"compute capability {major}.{minor} is not SM12x: {BACKEND} runs on SM120/SM121 "
                f"(RTX 50xx, RTX PRO 6000, DGX Spark); use --attention-backend TRITON_MLA or let "
                f"vLLM choose")
    if arch not in SUPPORTED_ARCHS:
        return (f"compute capability {major}.{minor}: the kernel is built for "
                f"{', '.join(SUPPORTED_ARCHS)} only (arch-specific code does not run on sm_{major}{minor})")
    if gpu.smem_optin < REQUIRED_SMEM_OPTIN:
        return (f"opt-in shared memory per block is {gpu.smem_optin} B; the kernel needs "
                f"{REQUIRED_SMEM_OPTIN} B")
    return None


def judge_gpu(gpu: GpuFacts, facts: Facts) -> GpuVerdict:
    major, minor = gpu.capability
    arch = f"{major}.{minor}a"
    reason = why_not_served(gpu, facts.allow_sm90)
    if reason is not None:
        kernel, detail = "-", "not served"
    elif gpu.prebuilt:
        kernel, detail = "prebuilt", gpu.prebuilt
    elif facts.nvcc:
        kernel, detail = "jit", (f"none built yet; built on first use with {facts.nvcc} "
                                 f"(1-3 minutes)")
    else:
        kernel, detail = "missing", (f"none built for sm_{major}{minor}a and no CUDA toolkit "
                                     f"(nvcc) to build one"
                                     + (f" (lookup failed: {gpu.prebuilt_error})" if gpu.prebuilt_error else ""))
    return GpuVerdict(gpu.index, gpu.name, f"{major}.{minor}", arch, gpu.smem_optin,
                      reason is None, reason, kernel, detail)


# ------------------------------------------------------------------------------- checks
def _software_problems(facts: Facts) -> list[Problem]:
    problems = []
    if facts.torch is None:
        problems.append(Problem("torch-missing", f"torch does not import ({facts.torch_error}); "
                                                 f"install vllm=={SUPPORTED_VLLM}, which brings its torch"))
    elif facts.torch_cuda is None:
        problems.append(Problem("torch-cpu-only", f"torch {facts.torch} is a CPU-only build; install "
                                                  f"vllm=={SUPPORTED_VLLM}, which brings a CUDA build of torch"))
    if facts.vllm is None:
        problems.append(Problem("vllm-missing", f"vLLM does not import ({facts.vllm_error}); install it "
                                                f"with: python -m pip install 'vllm=={SUPPORTED_VLLM}'"))
    if facts.entry_point is None:
        problems.append(Problem("entry-point-missing",
                                f"no entry point {ENTRY_POINT_NAME} in group {ENTRY_POINT_GROUP}: vLLM will "
                                f"not load the plugin; install mla_plugin with pip (python -m pip install "
                                f"mla_plugin, or -e . from a checkout)"))
    elif facts.entry_point != ENTRY_POINT_VALUE:
        problems.append(Problem("entry-point-wrong",
                                f"entry point {ENTRY_POINT_NAME} is {facts.entry_point!r}, expected "
                                f"{ENTRY_POINT_VALUE!r}; reinstall mla_plugin"))
    if facts.vllm is not None and facts.backend is None:
        problems.append(Problem("backend-unresolved",
                                f"{BACKEND} does not resolve in vLLM: {facts.backend_error}"))
    return problems


def _gpu_problems(facts: Facts, gpus: list[GpuVerdict]) -> list[Problem]:
    if not gpus:
        where = (f"CUDA_VISIBLE_DEVICES={facts.cuda_visible_devices!r}"
                 if facts.cuda_visible_devices is not None else "CUDA_VISIBLE_DEVICES unset")
        detail = f": {facts.gpu_error}" if facts.gpu_error else ""
        return [Problem("no-gpu", f"no CUDA GPU visible ({where}){detail}; {BACKEND} needs an "
                                  f"SM120/SM121 GPU")]
    served = [g for g in gpus if g.served]
    if not served:
        listed = "; ".join(f"GPU {g.index} {g.name}: {g.reason}" for g in gpus)
        return [Problem("no-served-gpu", f"no visible GPU is served: {listed}")]
    missing = [g for g in served if g.kernel == "missing"]
    if len(missing) == len(served):
        archs = ",".join(sorted({g.arch for g in missing}))
        return [Problem("no-kernel",
                        f"no kernel built for {archs} and no CUDA toolkit (nvcc) to build one: run "
                        f"`python -m mla_plugin build --arch {archs} --out DIR` on a machine with nvcc "
                        f"13 and set MLA_PLUGIN_PREBUILT_DIR=DIR here, or install the CUDA toolkit "
                        f"(or set CUDA_HOME)")]
    return []


def _warnings(facts: Facts, gpus: list[GpuVerdict]) -> list[str]:
    warnings = []
    if facts.vllm is not None and facts.vllm != SUPPORTED_VLLM:
        warnings.append(f"vLLM {facts.vllm} found; mla_plugin is built and tested against "
                        f"{SUPPORTED_VLLM}")
    served = [g for g in gpus if g.served]
    if served and len(served) < len(gpus):
        keep = ",".join(str(g.index) for g in served)
        skipped = ", ".join(f"GPU {g.index} ({g.name})" for g in gpus if not g.served)
        warnings.append(f"{skipped} not served; vLLM takes the first visible GPUs, so set "
                        f"CUDA_VISIBLE_DEVICES={keep}")
    all_missing = bool(served) and all(g.kernel == "missing" for g in served)  # no-kernel says it
    for g in served:
        if g.kernel == "jit":
            warnings.append(f"GPU {g.index}: no prebuilt kernel for sm_{g.arch.replace('.', '')}; "
                            f"the first request builds it (1-3 minutes); build it ahead with "
                            f"`python -m mla_plugin build --arch {g.arch}`")
        elif g.kernel == "missing" and not all_missing:
            warnings.append(f"GPU {g.index}: {g.kernel_detail}")
    if any(g.served and g.capability == "9.0" for g in gpus):
        warnings.append(f"serving Hopper for testing only ({ALLOW_SM90_ENV}=1)")
    stale = [b for b in facts.builds if not b.get("current")]
    if stale:
        warnings.append(f"{len(stale)} kernel build(s) found for other sources or torch versions "
                        f"(ignored): {', '.join(str(b.get('path')) for b in stale)}")
    return warnings


def serve_command(facts: Facts, gpus: list[GpuVerdict]) -> str:
    served = [g for g in gpus if g.served and g.kernel != "missing"]
    tp = 1
    while tp * 2 <= len(served):  # MLA head counts are powers of two: TP must be one too
        tp *= 2
    env = []
    if len(served) < len(gpus):
        env.append("CUDA_VISIBLE_DEVICES=" + ",".join(str(g.index) for g in served))
    if any(g.capability == "9.0" for g in served):
        env.append(f"{ALLOW_SM90_ENV}=1")
    command = env + ["vllm", "serve", "<model>", "--attention-backend", BACKEND]
    if tp > 1:
        command += ["--tensor-parallel-size", str(tp)]
    return " ".join(command)


# ------------------------------------------------------------------ zero-flag serving
def all_sm12x(gpus: list[GpuVerdict]) -> bool:
    return bool(gpus) and all(g.capability.startswith("12.") for g in gpus)


def triton_mla_line(facts: Facts, gpus: list[GpuVerdict]) -> str:
    """What TRITON_MLA resolves to and why, from the facts and register()'s decision."""
    decision = facts.zero_flag or {}
    if facts.vllm is None:
        where = "not checked (no vLLM)"
    elif facts.triton_mla == OUR_CLASS:
        where = f"-> {OUR_CLASS} ({BACKEND})"
    elif facts.triton_mla:
        where = f"-> {facts.triton_mla} (vLLM's own)"
    else:
        where = "unresolved"
    if decision.get("applied") or decision.get("requested"):
        why = decision.get("reason", "")
    elif decision.get("value") not in (None, "", "0"):
        why = decision.get("reason", "")
    elif all_sm12x(gpus):
        why = (f"{REPLACE_ENV} is not set; with {REPLACE_ENV}=1 vLLM picks {BACKEND} here "
               f"without --attention-backend (every visible GPU is SM 12.x)")
    else:
        why = f"{REPLACE_ENV} is not set"
    return f"{where}; {why}" if why else where


def _zero_flag_warnings(facts: Facts) -> list[str]:
    decision = facts.zero_flag or {}
    requested = decision.get("requested")
    if decision.get("value") not in (None, "", "0") and not requested:
        return [decision.get("reason", "")]
    if requested and not decision.get("applied"):
        if facts.vllm is None:
            return []  # nothing to override; vllm-missing says what blocks
        return [decision.get("reason", "")]
    if decision.get("applied") and facts.triton_mla != OUR_CLASS:
        return [f"{REPLACE_ENV}=1 was applied, but TRITON_MLA resolves to {facts.triton_mla}"]
    return []


def zero_flag_command(facts: Facts, gpus: list[GpuVerdict]) -> str | None:
    """`vllm serve` without --attention-backend, when the variable would apply: every visible
    GPU SM 12.x (the variable never makes Hopper pick the backend)."""
    if not all_sm12x(gpus) or not all(g.served for g in gpus):
        return None
    command = serve_command(facts, gpus).split()
    at = command.index("--attention-backend")
    del command[at:at + 2]
    return " ".join([f"{REPLACE_ENV}=1"] + command)


def diagnose(facts: Facts) -> Verdict:
    gpus = [judge_gpu(g, facts) for g in facts.gpus]
    verdict = Verdict(gpus=gpus)
    verdict.problems = _software_problems(facts) + _gpu_problems(facts, gpus)
    verdict.warnings = _warnings(facts, gpus) + _zero_flag_warnings(facts)
    verdict.triton_mla = triton_mla_line(facts, gpus)
    if verdict.ok:
        verdict.serve_command = serve_command(facts, gpus)
        verdict.zero_flag_command = zero_flag_command(facts, gpus)
    return verdict
