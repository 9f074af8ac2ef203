"""Zero-flag serving: MLA_PLUGIN_REPLACE_TRITON_MLA=1 points vLLM's TRITON_MLA at our backend.

On compute capability 12.x vLLM 0.33's MLA priority list is [TRITON_MLA,
FLASHINFER_MLA_SPARSE_SM120] (vllm/platforms/cuda.py), so once TRITON_MLA's class path is
mla_plugin.backend.XqaMlaBackend (vLLM's public register_backend override), `vllm serve
<model>` picks our kernel with no --attention-backend. It is an opt-in because the override
takes vLLM's own TRITON_MLA away for the whole process, also for the configurations our
backend refuses (other head sizes, batch invariance, ...).

The override is made only when every GPU this process can see is SM 12.x, read through NVML
(nvidia-ml-py's pynvml, which vLLM depends on): NVML creates no CUDA context, so the API
server stays free of one. Without the variable, or when one visible GPU is not SM 12.x (or
NVML can't tell), nothing changes. The decision is made once per process (per value of the
variables it reads) and said in one line on vLLM's logger tree ("vllm.mla_plugin"), in
vLLM's log format and level, or on stderr while no logging is set up yet (vLLM 0.33 sets up
its handler only after the CLI has loaded the plugins).

No torch, no vLLM at import; pynvml is imported only when the variable asks for the override.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass, field

REPLACE_ENV = "MLA_PLUGIN_REPLACE_TRITON_MLA"
TRITON_MLA = "TRITON_MLA"
# A child of vLLM's "vllm" logger: vLLM's handler, format and VLLM_LOGGING_LEVEL apply.
logger = logging.getLogger("vllm.mla_plugin")

_BACKEND = "MLA_XQA_SM120"


@dataclass
class SeenGpu:
    index: int  # NVML index (PCI bus order)
    name: str
    capability: tuple[int, int]


@dataclass
class Decision:
    """What MLA_PLUGIN_REPLACE_TRITON_MLA asks for and what was done about it."""
    value: str | None  # the variable as set (None: unset)
    requested: bool  # the variable is "1"
    eligible: bool  # every visible GPU is SM 12.x (NVML); False when not checked
    applied: bool = False  # TRITON_MLA was pointed at our backend in this process
    reason: str = ""  # one sentence: what happened and why
    gpus: list[SeenGpu] = field(default_factory=list)  # the visible GPUs NVML reported

    def to_dict(self) -> dict:
        return asdict(self)


class NvmlUnavailable(RuntimeError):
    """NVML could not list the GPUs; the message says why."""


# ------------------------------------------------------------------------------- NVML
def visible_indices(cuda_visible_devices: str | None, count: int) -> list[int] | None:
    """The NVML indices CUDA_VISIBLE_DEVICES leaves visible, read as CUDA reads it (a list
    of indices, cut at the first invalid one; '' hides every GPU). None when it names GPUs
    otherwise (UUIDs, MIG instances): then the caller checks every GPU, which is stricter."""
    if cuda_visible_devices is None:
        return list(range(count))
    indices: list[int] = []
    for token in cuda_visible_devices.split(","):
        token = token.strip()
        try:
            index = int(token)
        except ValueError:
            if not token and not indices:
                break  # '' or a leading empty item: nothing visible
            if token:
                return None  # a UUID or MIG name: not an index
            break
        if index < 0 or index >= count or index in indices:
            break
        indices.append(index)
    return indices


def nvml_gpus() -> list[SeenGpu]:
    """Every GPU NVML sees, in NVML (PCI bus) order; raises NvmlUnavailable."""
    try:
        import pynvml
    except Exception as exc:  # not installed, or the unofficial package's conflict
        raise NvmlUnavailable(f"nvidia-ml-py (pynvml) does not import ({type(exc).__name__}: "
                              f"{exc})") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        raise NvmlUnavailable(f"NVML does not answer ({type(exc).__name__}: {exc}; no NVIDIA "
                              f"driver?)") from exc
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(SeenGpu(index, str(name), (int(major), int(minor))))
        return gpus
    except Exception as exc:
        raise NvmlUnavailable(f"NVML failed while listing the GPUs ({type(exc).__name__}: "
                              f"{exc})") from exc
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


# --------------------------------------------------------------------------- decision
def _describe(gpus: list[SeenGpu]) -> str:
    return ", ".join(f"GPU {g.index} {g.name}: {g.capability[0]}.{g.capability[1]}" for g in gpus)


def decide(value: str | None, cuda_visible_devices: str | None, device_order: str | None,
           list_gpus=nvml_gpus) -> Decision:
    """The decision for these variables, without touching vLLM (list_gpus: tests fake it)."""
    if value is None or value.strip() in ("", "0"):
        return Decision(value, False, False, reason=f"{REPLACE_ENV} is not set: {TRITON_MLA} is "
                                                   f"vLLM's own")
    if value.strip() != "1":
        return Decision(value, False, False,
                        reason=f"{REPLACE_ENV}={value!r} is neither 1 nor 0: ignored, {TRITON_MLA} "
                               f"is vLLM's own")
    not_done = f"{TRITON_MLA} left as vLLM's own"
    try:
        every_gpu = list_gpus()
    except NvmlUnavailable as exc:
        return Decision(value, True, False, reason=f"{REPLACE_ENV}=1, but {exc}: {not_done}")
    indices = visible_indices(cuda_visible_devices, len(every_gpu))
    gpus = every_gpu if indices is None else [every_gpu[i] for i in indices]
    if not gpus:
        where = (f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}" if cuda_visible_devices is not None
                 else "NVML lists none")
        return Decision(value, True, False, reason=f"{REPLACE_ENV}=1, but no GPU is visible "
                                                   f"({where}): {not_done}")
    others = [g for g in gpus if g.capability[0] != 12]
    if others:
        return Decision(value, True, False, gpus=gpus,
                        reason=f"{REPLACE_ENV}=1, but not every visible GPU is SM 12.x "
                               f"({_describe(others)}): {not_done} ({_BACKEND} serves SM120/SM121)")
    mixed = any(g.capability[0] != 12 for g in every_gpu)
    if mixed and indices is not None and device_order != "PCI_BUS_ID":
        # CUDA numbers GPUs fastest first unless told otherwise; NVML in PCI order.
        return Decision(value, True, False, gpus=gpus,
                        reason=f"{REPLACE_ENV}=1, but this machine mixes SM 12.x and other GPUs "
                               f"({_describe(every_gpu)}) and CUDA_VISIBLE_DEVICES="
                               f"{cuda_visible_devices!r} names them by index without "
                               f"CUDA_DEVICE_ORDER=PCI_BUS_ID, so which ones CUDA uses is not "
                               f"certain: set CUDA_DEVICE_ORDER=PCI_BUS_ID; {not_done}")
    return Decision(value, True, True, gpus=gpus,
                    reason=f"{REPLACE_ENV}=1 and every visible GPU is SM 12.x ({_describe(gpus)})")


_decisions: dict[tuple, Decision] = {}
_logged: set[tuple] = set()


def _key() -> tuple:
    return (os.environ.get(REPLACE_ENV), os.environ.get("CUDA_VISIBLE_DEVICES"),
            os.environ.get("CUDA_DEVICE_ORDER"))


def decision() -> Decision:
    """This process's decision (made once per value of the variables; NVML is asked only
    when the variable is 1)."""
    key = _key()
    found = _decisions.get(key)
    if found is None:
        found = _decisions[key] = decide(*key)
    return found


def reset() -> None:
    """Forget the decisions made and logged (tests)."""
    _decisions.clear()
    _logged.clear()


def apply(backend_enum, register_backend, class_path: str) -> Decision:
    """register()'s step: point TRITON_MLA at class_path when the decision says so, and log
    the outcome once per decision. Idempotent: NVML is asked once, later calls only look at
    vLLM's registry."""
    d = decision()
    if d.requested and d.eligible:
        member = backend_enum[TRITON_MLA]
        current = member.get_path()
        if current == class_path:
            d.applied = True
        elif member.is_overridden():
            d.eligible = d.applied = False
            d.reason = (f"{REPLACE_ENV}=1, but {TRITON_MLA} is already overridden to {current!r} "
                        f"(by another plugin): left as it is")
        else:
            register_backend(member, class_path)
            d.applied = True
        suffix = (f": {TRITON_MLA} now runs {class_path} ({_BACKEND}), no --attention-backend "
                  f"needed; unset {REPLACE_ENV} for vLLM's own")
        if d.applied and not d.reason.endswith(suffix):
            d.reason += suffix
    key = _key()
    if key not in _logged:
        _logged.add(key)
        if d.applied:
            _say(logging.INFO, d.reason)
        elif d.value is not None and d.value.strip() not in ("", "0"):
            _say(logging.WARNING, d.reason)
        else:
            logger.debug("mla_plugin: %s", d.reason)
    return d


def _say(level: int, text: str) -> None:
    """One line on vLLM's logger; on stderr when no logging is set up yet (vLLM 0.33 sets
    up its handler after the CLI has loaded the plugins), so the line is never lost."""
    if logger.hasHandlers():
        logger.log(level, "mla_plugin: %s", text)
    else:
        print(f"{logging.getLevelName(level)} mla_plugin: {text}", file=sys.stderr, flush=True)


def triton_mla_is(backend_enum, class_path: str) -> bool:
    """Does TRITON_MLA resolve to class_path in this process?"""
    try:
        return backend_enum[TRITON_MLA].get_path() == class_path
    except Exception:
        return False
