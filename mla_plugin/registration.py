"""Registration of the MLA_XQA_SM120 attention backend with vLLM.

vLLM calls ``register()`` through the ``vllm.general_plugins`` entry point in the CLI
parser, in EngineArgs, in the engine core and in every worker, so it must be idempotent
and cheap: it imports no torch and touches no CUDA (vLLM's registry module needs
neither), and builds nothing. The backend module itself is only imported when vLLM
resolves the class.

With MLA_PLUGIN_REPLACE_TRITON_MLA=1 it also points vLLM's TRITON_MLA at the backend when
every visible GPU is SM 12.x (mla_plugin.zero_flag: NVML, no CUDA context, once per process).
"""

from __future__ import annotations

import importlib.util
import logging

from mla_plugin import zero_flag

logger = logging.getLogger(__name__)

BACKEND_NAME = "MLA_XQA_SM120"
BACKEND_CLASS_PATH = "mla_plugin.backend.XqaMlaBackend"


def register() -> None:
    """Add ``AttentionBackendEnum.MLA_XQA_SM120`` -> ``mla_plugin.backend.XqaMlaBackend``,
    and with MLA_PLUGIN_REPLACE_TRITON_MLA=1 on an all-SM12x machine point ``TRITON_MLA`` at
    the same class (mla_plugin.zero_flag).

    Safe to call any number of times. Without vLLM installed it does nothing (the op in
    mla_plugin.ops works without vLLM).
    """
    if importlib.util.find_spec("vllm") is None:
        logger.debug("mla_plugin: vLLM is not installed; no attention backend registered")
        return
    try:
        from vllm.v1.attention.backends.registry import (
            AttentionBackendEnum,
            register_backend,
        )
    except ImportError as exc:
        # An installed but incompatible vLLM must not stop vLLM serving other backends.
        logger.warning(
            "mla_plugin: cannot register %s: this vLLM has no attention backend "
            "registry (%s); mla_plugin needs vllm==0.33.0",
            BACKEND_NAME,
            exc,
        )
        return

    member = AttentionBackendEnum.__members__.get(BACKEND_NAME)
    if member is None:
        register_backend(BACKEND_NAME, BACKEND_CLASS_PATH)
        member = AttentionBackendEnum[BACKEND_NAME]
    elif member.value != BACKEND_CLASS_PATH:
        raise RuntimeError(
            f"mla_plugin: the attention backend name {BACKEND_NAME} is already taken by "
            f"{member.value!r}; uninstall the other plugin that registers it"
        )
    _pickle_by_name(member)
    try:
        zero_flag.apply(AttentionBackendEnum, register_backend, BACKEND_CLASS_PATH)
    except Exception as exc:  # the opt-in must never stop the explicit backend from working
        zero_flag.logger.warning("mla_plugin: %s=1 not applied: %s: %s", zero_flag.REPLACE_ENV,
                                 type(exc).__name__, exc)


def _pickle_by_name(member) -> None:
    # Enum members pickle by value: AttentionBackendEnum("mla_plugin.backend....").
    # vLLM's spawned engine processes unpickle the config before loading plugins, where
    # that lookup fails. Pickling through restore_backend() registers first instead.
    member.__reduce_ex__ = _reduce_backend_member


def _reduce_backend_member(protocol: int):
    return restore_backend, (BACKEND_NAME,)


def restore_backend(name: str):
    """Unpickling hook: register the backend, then return its enum member by name."""
    register()
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum[name]
