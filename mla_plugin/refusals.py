"""Why MLA_XQA_SM120 refuses a configuration, and what to do instead.

One sentence per unsupported feature, each naming the feature and a working
alternative. backend.py uses them in validate_configuration (vLLM prints them when a
user selects the backend for a model it can't serve) and when it constructs the impl.
Plain strings: no vLLM or torch import here.
"""

from __future__ import annotations

import os

from mla_plugin import geometry

BACKEND = "MLA_XQA_SM120"
ALLOW_SM90_ENV = "MLA_PLUGIN_ALLOW_SM90"
SUPPORTED_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3")
KERNEL_BLOCK_SIZES = geometry.BLOCK_SIZES
HEAD_SIZE = geometry.HEAD_DIM  # kv_lora_rank 512 + qk_rope_head_dim 64
MAX_QUERY_LEN = geometry.MAX_QUERY_LEN

_OTHER_BACKEND = f"drop --attention-backend {BACKEND} and let vLLM choose"


def sm90_allowed() -> bool:
    return os.environ.get(ALLOW_SM90_ENV) == "1"


def capability_served(major: int, minor: int, allow_sm90: bool | None = None) -> bool:
    """The GPUs the backend serves: every SM 12.x, and Hopper 9.0 (the same mma.sync / TMA
    code, built for sm_90a) only on test machines with MLA_PLUGIN_ALLOW_SM90=1 (read from
    the environment unless `allow_sm90` is given). One rule for
    backend.supports_compute_capability and `doctor`."""
    if major == 12:
        return True
    if allow_sm90 is None:
        allow_sm90 = sm90_allowed()
    return (major, minor) == (9, 0) and allow_sm90


def head_size(value) -> str:
    return (f"head size {value} not supported: {BACKEND} needs {HEAD_SIZE} (kv_lora_rank "
            f"512 + qk_rope_head_dim 64, as in DeepSeek V2/V3/R1 and Kimi K2); use "
            f"--attention-backend TRITON_MLA")


def latent_dims(kv_lora_rank, qk_rope_head_dim) -> str:
    return (f"MLA latent dims kv_lora_rank={kv_lora_rank}, qk_rope_head_dim="
            f"{qk_rope_head_dim} not supported: {BACKEND} needs 512 and 64; use "
            f"--attention-backend TRITON_MLA")


def model_dtype(value) -> str:
    return (f"model dtype {value} not supported: {BACKEND} runs bfloat16 or float16 "
            f"models; use --dtype bfloat16")


def kv_cache_dtype(value) -> str:
    return (f"--kv-cache-dtype {value} not supported: {BACKEND} reads 16-bit caches and "
            f"per-tensor FP8 e4m3 caches only (no fp8_e5m2, per-token-head or packed "
            f"formats); use --kv-cache-dtype fp8 or drop --kv-cache-dtype {value}")


def kv_cache_dtype_mismatch(cache_dtype, dtype) -> str:
    return (f"--kv-cache-dtype {cache_dtype} with a {dtype} model not supported: a 16-bit "
            f"cache must be in the model's dtype; drop --kv-cache-dtype {cache_dtype} "
            f"(auto) or use --kv-cache-dtype fp8")


def block_size(value) -> str:
    return (f"--block-size {value} not supported: the kernel reads pages of "
            f"{', '.join(map(str, KERNEL_BLOCK_SIZES))} tokens, so the block size must be a "
            f"multiple of 16; use --block-size 64")


def not_mla() -> str:
    return (f"a model without MLA not supported: {BACKEND} serves MLA models (DeepSeek "
            f"V2/V3/R1, Kimi K2) only; {_OTHER_BACKEND}")


def sparse() -> str:
    return (f"sparse MLA (DeepSeek V3.2-style indexer) not supported: {BACKEND} is dense "
            f"decode; {_OTHER_BACKEND} (it picks a sparse MLA backend)")


def compute_capability(capability) -> str:
    where = (f"{capability.major}.{capability.minor}" if capability is not None
             else "unknown")
    return (f"compute capability {where} not supported: {BACKEND} runs on SM120/SM121 "
            f"(RTX 50xx, RTX PRO 6000, DGX Spark), and on Hopper 9.0 only for testing with "
            f"{ALLOW_SM90_ENV}=1; use --attention-backend TRITON_MLA")


def attention_type(value) -> str:
    return (f"attention type {value} (encoder or cross attention) not supported: "
            f"{BACKEND} is decoder self-attention only; {_OTHER_BACKEND}")


def sinks() -> str:
    return f"attention sinks not supported by {BACKEND}; {_OTHER_BACKEND}"


def sliding_window() -> str:
    return f"sliding-window attention not supported by {BACKEND}; {_OTHER_BACKEND}"


def alibi() -> str:
    return f"ALiBi slopes not supported by {BACKEND}; {_OTHER_BACKEND}"


def logits_soft_cap() -> str:
    return f"logits soft cap not supported by {BACKEND}; {_OTHER_BACKEND}"


def per_head_quant_scales() -> str:
    return (f"per-head KV quantisation scales not supported: {BACKEND} takes one "
            f"per-tensor FP8 scale; drop --kv-cache-dtype (16-bit cache) or "
            f"{_OTHER_BACKEND}")


def batch_invariance() -> str:
    return (f"batch-invariant mode (VLLM_BATCH_INVARIANT=1) not supported by {BACKEND}; "
            f"unset VLLM_BATCH_INVARIANT or use --attention-backend TRITON_MLA")


def non_causal_with_dcp() -> str:
    return (f"non-causal multi-token MLA with decode context parallelism not supported by "
            f"{BACKEND}; use --decode-context-parallel-size 1")


def causal_multi_token_with_dcp(query_len) -> str:
    return (f"causal multi-token decode (query_len {query_len}, MTP / speculative decoding) "
            f"with decode context parallelism not supported by {BACKEND}: under DCP "
            f"seq_lens are rank-local, so per-row causal extents can't be derived; use "
            f"--decode-context-parallel-size 1 or turn speculative decoding off")


def query_len(value) -> str:
    return (f"{value} query tokens per decode request not supported: {BACKEND} decodes at "
            f"most {MAX_QUERY_LEN} (num_speculative_tokens <= {MAX_QUERY_LEN - 1}); lower "
            f"num_speculative_tokens in --speculative-config or use --attention-backend "
            f"TRITON_MLA")


def kv_sharing() -> str:
    return f"KV-cache sharing between layers not supported by {BACKEND}; {_OTHER_BACKEND}"


def with_triton_mla_replaced(reason: str) -> str:
    """A refusal while MLA_PLUGIN_REPLACE_TRITON_MLA=1 has pointed TRITON_MLA at this backend:
    then "use TRITON_MLA" or "let vLLM choose" land here again, so say how to undo it."""
    from mla_plugin.zero_flag import REPLACE_ENV

    return (f"{reason} (in this process TRITON_MLA runs {BACKEND}, because {REPLACE_ENV}=1: "
            f"unset {REPLACE_ENV} to get vLLM's own TRITON_MLA back)")
