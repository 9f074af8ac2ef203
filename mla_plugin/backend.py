"""vLLM glue for MLA_XQA_SM120: backend, metadata builder and impl (vLLM 0.33).

Thin, like vLLM's TRITON_MLA: vLLM's MLA layer does the projections, the prefill and the
cache writes; this backend only answers vLLM's selection questions and runs the decode
(forward_mqa) through mla_plugin.ops.mla_decode. Kernel knowledge stays in ops.py.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from vllm.config import get_current_vllm_config
from vllm.config.cache import CacheDType
from vllm.model_executor.layers.attention.mla_attention import (
    MLACommonBackend,
    MLACommonImpl,
    MLACommonMetadata,
    MLACommonMetadataBuilder,
    QueryLenSupport,
)
from vllm.platforms import current_platform
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.backend import (
    AttentionCGSupport,
    AttentionLayer,
    AttentionType,
    MultipleOf,
    max_decode_query_len,
)

from mla_plugin import geometry, ops, refusals, zero_flag
from mla_plugin.registration import BACKEND_CLASS_PATH, BACKEND_NAME

_FP8 = torch.float8_e4m3fn


class XqaMlaMetadataBuilder(MLACommonMetadataBuilder[MLACommonMetadata]):
    # forward_mqa hands a uniform multi-token block (MTP / speculative decode, causal or
    # not) to the kernel as query_len rows per request; decode metadata is views of the
    # runner's persistent block table and seq_lens, so full CUDA graphs replay it.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH
    query_len_support: ClassVar[QueryLenSupport] = QueryLenSupport.UNIFORM
    supports_non_causal_multi_token_decode: ClassVar[bool] = True


class XqaMlaBackend(MLACommonBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16]
    supported_kv_cache_dtypes: ClassVar[list[CacheDType]] = list(
        refusals.SUPPORTED_KV_CACHE_DTYPES
    )

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[XqaMlaImpl]:
        return XqaMlaImpl

    @staticmethod
    def get_builder_cls() -> type[XqaMlaMetadataBuilder]:
        return XqaMlaMetadataBuilder

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return [refusals.HEAD_SIZE]

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return list(refusals.KERNEL_BLOCK_SIZES)

    @classmethod
    def supports_compute_capability(cls, capability: DeviceCapability) -> bool:
        if capability is None:
            return False
        return refusals.capability_served(capability.major, capability.minor)

    @classmethod
    def supports_non_causal(cls) -> bool:
        return True  # the kernel has a causal flag

    @classmethod
    def supports_combination(cls, head_size, dtype, kv_cache_dtype, block_size, use_mla,
                             has_sink, use_sparse, use_mm_prefix, device_capability):
        # A 16-bit cache is read as q's dtype: it must be the model's dtype.
        cache_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            kv_cache_dtype
        )
        if cache_dtype is not None and dtype in cls.supported_dtypes and cache_dtype != dtype:
            return refusals.kv_cache_dtype_mismatch(kv_cache_dtype, dtype)
        return None

    @classmethod
    def validate_configuration(cls, head_size, dtype, kv_cache_dtype, block_size, use_mla,
                               has_sink, use_sparse, use_mm_prefix,
                               use_per_head_quant_scales, device_capability, attn_type,
                               **more) -> list[str]:
        reasons = super().validate_configuration(
            head_size=head_size, dtype=dtype, kv_cache_dtype=kv_cache_dtype,
            block_size=block_size, use_mla=use_mla, has_sink=has_sink,
            use_sparse=use_sparse, use_mm_prefix=use_mm_prefix,
            use_per_head_quant_scales=use_per_head_quant_scales,
            device_capability=device_capability, attn_type=attn_type, **more,
        )
        # vLLM's reasons are terse ("head_size not supported"): say what and what instead.
        # A reason vLLM adds later passes through as it is: still a refusal.
        explained = {
            "head_size not supported": refusals.head_size(head_size),
            "dtype not supported": refusals.model_dtype(dtype),
            "kv_cache_dtype not supported": refusals.kv_cache_dtype(kv_cache_dtype),
            "block_size not supported": refusals.block_size(block_size),
            "non-MLA not supported": refusals.not_mla(),
            "sparse not supported": refusals.sparse(),
            "attention sinks not supported": refusals.sinks(),
            "per-head quant scales not supported": refusals.per_head_quant_scales(),
            "compute capability not supported": refusals.compute_capability(
                device_capability
            ),
            f"attention type {attn_type} not supported": refusals.attention_type(attn_type),
            "sliding window not supported": refusals.sliding_window(),
            "non-causal MLA attention with DCP not supported": refusals.non_causal_with_dcp(),
            "batch invariance not supported": refusals.batch_invariance(),
        }
        reasons = [explained.get(reason, reason) for reason in reasons]
        if reasons and _triton_mla_replaced():
            reasons = [refusals.with_triton_mla_replaced(r) for r in reasons]
        return reasons


def _triton_mla_replaced() -> bool:
    """Has MLA_PLUGIN_REPLACE_TRITON_MLA=1 pointed vLLM's TRITON_MLA at this backend?"""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return zero_flag.triton_mla_is(AttentionBackendEnum, BACKEND_CLASS_PATH)


class XqaMlaImpl(MLACommonImpl[MLACommonMetadata]):
    can_return_lse_for_decode: bool = True  # natural log, as vLLM's DCP merge expects
    # Mirrors TRITON_MLA: query_len 1 and non-causal blocks work on rank-local seq_lens;
    # causal multi-token blocks under DCP are refused in forward_mqa.
    supports_dcp: bool = True

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 alibi_slopes: list[float] | None, sliding_window: int | None,
                 kv_cache_dtype: str, logits_soft_cap: float | None, attn_type: str,
                 kv_sharing_target_layer_name: str | None, **mla_args) -> None:
        try:
            _refuse_unsupported(
                head_size=head_size, alibi_slopes=alibi_slopes, sliding_window=sliding_window,
                kv_cache_dtype=kv_cache_dtype, logits_soft_cap=logits_soft_cap,
                attn_type=attn_type, kv_sharing_target_layer_name=kv_sharing_target_layer_name,
                kv_lora_rank=mla_args.get("kv_lora_rank"),
                qk_rope_head_dim=mla_args.get("qk_rope_head_dim"),
            )
        except (NotImplementedError, ValueError) as exc:
            if not _triton_mla_replaced():
                raise
            raise type(exc)(refusals.with_triton_mla_replaced(str(exc))) from exc
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes,
                         sliding_window, kv_cache_dtype, logits_soft_cap, attn_type,
                         kv_sharing_target_layer_name, **mla_args)
        # Take BF16/FP16 q even with an FP8 cache: the kernel quantises each row of q
        # itself (a per-row scale keeps more precision than vLLM's per-tensor one) and
        # saves vLLM a separate quantisation pass.
        self.supports_quant_query_input = False
        model_config = get_current_vllm_config().model_config
        model_dtype = getattr(model_config, "dtype", None)
        # Only reached if vLLM ever hands over an FP8 q anyway: write the model's dtype.
        self._fp8_query_out_dtype = (
            model_dtype if model_dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        )

    def forward_mqa(
        self,
        q: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        kv_c_and_k_pe_cache: torch.Tensor,
        attn_metadata: MLACommonMetadata,
        layer: AttentionLayer,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        decode = attn_metadata.decode
        assert decode is not None, "forward_mqa runs on decode metadata"
        num_rows = q[0].shape[0] if isinstance(q, tuple) else q.shape[0]
        num_requests = decode.seq_lens.shape[0]
        # Uniform decode blocks: every request has the same number of query rows.
        query_len, remainder = divmod(num_rows, num_requests) if num_requests else (1, 0)
        if remainder:
            raise RuntimeError(
                f"{BACKEND_NAME}: non-uniform decode block: {num_rows} query rows over "
                f"{num_requests} requests"
            )
        causal = bool(attn_metadata.causal)
        if causal and query_len > 1 and self.dcp_world_size > 1:
            raise NotImplementedError(refusals.causal_multi_token_with_dcp(query_len))

        q_is_fp8 = isinstance(q, torch.Tensor) and q.dtype == _FP8
        out = None
        if q_is_fp8:
            out = torch.empty(num_rows, q.shape[1], self.kv_lora_rank,
                              dtype=self._fp8_query_out_dtype, device=q.device)
        return ops.mla_decode(
            q,
            kv_c_and_k_pe_cache,
            decode.block_table,
            decode.seq_lens,
            softmax_scale=self.scale,
            kv_scale=layer._k_scale if kv_c_and_k_pe_cache.dtype == _FP8 else None,
            q_scale=layer._q_scale if q_is_fp8 else None,
            query_len=query_len,
            causal=causal,
            out=out,
            return_lse=True,
            max_seq_len=attn_metadata.max_seq_len,
        )


def _refuse_unsupported(*, head_size, alibi_slopes, sliding_window, kv_cache_dtype,
                        logits_soft_cap, attn_type, kv_sharing_target_layer_name,
                        kv_lora_rank, qk_rope_head_dim) -> None:
    """What validate_configuration may not see (vLLM builds the impl directly)."""
    if alibi_slopes is not None:
        raise NotImplementedError(refusals.alibi())
    if sliding_window is not None:
        raise NotImplementedError(refusals.sliding_window())
    if logits_soft_cap:
        raise NotImplementedError(refusals.logits_soft_cap())
    if attn_type != AttentionType.DECODER:
        raise NotImplementedError(refusals.attention_type(attn_type))
    if kv_sharing_target_layer_name is not None:
        raise NotImplementedError(refusals.kv_sharing())
    if kv_cache_dtype not in refusals.SUPPORTED_KV_CACHE_DTYPES:
        raise ValueError(refusals.kv_cache_dtype(kv_cache_dtype))
    if head_size != refusals.HEAD_SIZE:
        raise ValueError(refusals.head_size(head_size))
    if (kv_lora_rank, qk_rope_head_dim) != (geometry.LATENT_DIM, geometry.ROPE_DIM):
        raise ValueError(refusals.latent_dims(kv_lora_rank, qk_rope_head_dim))
    decode_query_len = max_decode_query_len(get_current_vllm_config())
    if decode_query_len > refusals.MAX_QUERY_LEN:
        raise ValueError(refusals.query_len(decode_query_len))
    if current_platform.is_cuda():
        capability = current_platform.get_device_capability()
        if not XqaMlaBackend.supports_compute_capability(capability):
            raise ValueError(refusals.compute_capability(capability))
