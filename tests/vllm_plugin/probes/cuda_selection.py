"""vLLM's own attention-backend selection for the CUDA platform, run on this CPU-only machine
(imported by the zero-flag probes; not a test module).

What is stood in, and nothing else: vllm._C_stable_libtorch (vLLM's CUDA custom-op library,
which vllm/platforms/cuda.py imports and which can't load without libcuda; selection calls
none of its ops), the GPUs (fake_nvml.py, at the NVML boundary: vLLM's NvmlCudaPlatform reads
the compute capability from it, exactly as on a real machine), and backends whose modules
need a GPU just to import (CUTLASS_MLA allocates a CUDA workspace at import): those are
reported to vLLM as unavailable, as an ImportError would be. vLLM's priority lists, its
validate_configuration calls and its choice are its own.
"""

from __future__ import annotations

import sys
import types

import torch


def cuda_platform():
    """vllm.platforms.cuda's CudaPlatform class, importable here."""
    sys.modules.setdefault("vllm._C_stable_libtorch", types.ModuleType("vllm._C_stable_libtorch"))
    import vllm.platforms.cuda as cuda

    if not getattr(cuda, "_cpu_probe_wrapped", False):
        real = cuda._get_attn_backend_class

        def importable_here(backend):
            try:
                return real(backend)
            except (ImportError, OSError):
                raise
            except Exception as exc:  # a module that touches the GPU at import
                raise ImportError(f"{backend.name} does not import on this CPU-only machine: "
                                  f"{type(exc).__name__}: {exc}") from exc

        cuda._get_attn_backend_class = importable_here
        cuda._cpu_probe_wrapped = True
    return cuda.CudaPlatform


def select_mla_backend(vllm_config, kv_cache_dtype: str = "auto", num_heads: int = 16) -> str:
    """The class vLLM's selector (vllm.v1.attention.selector.get_attn_backend) picks for the
    MLA layers of `vllm_config`'s model on the CUDA platform, as 'module.Class'."""
    import vllm.platforms
    from vllm.config import set_current_vllm_config
    from vllm.v1.attention import selector

    # Modules that look at current_platform while they import: import them as CPU first.
    import mla_plugin.backend  # noqa: F401
    import vllm.v1.attention.backends.mla.triton_mla  # noqa: F401

    platform_cls = cuda_platform()
    forget_capability()
    selector._cached_get_attn_backend.cache_clear()
    saved = vllm.platforms._current_platform
    vllm.platforms._current_platform = platform_cls()
    try:
        with set_current_vllm_config(vllm_config):
            cls = selector.get_attn_backend(576, vllm_config.model_config.dtype, kv_cache_dtype,
                                            use_mla=True, num_heads=num_heads)
    finally:
        vllm.platforms._current_platform = saved
        selector._cached_get_attn_backend.cache_clear()
    return f"{cls.__module__}.{cls.__qualname__}"


def forget_capability() -> None:
    """vLLM caches the capability per process; the probes change the fake GPUs."""
    cached = cuda_platform().get_device_capability
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()


def capability_seen() -> str:
    forget_capability()
    cap = cuda_platform().get_device_capability()
    return f"{cap.major}.{cap.minor}"
