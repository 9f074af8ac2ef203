"""mla_plugin: a vLLM attention backend (MLA_XQA_SM120) for DeepSeek-style MLA decode
on SM120/SM121 Blackwell workstation GPUs.

Importing this package is cheap: it imports neither torch nor vLLM. ``register`` is the
``vllm.general_plugins`` entry point; the op is ``mla_plugin.ops.mla_decode``.
"""

from mla_plugin.registration import BACKEND_NAME, register

__all__ = ["BACKEND_NAME", "register"]
