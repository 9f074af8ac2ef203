"""The class API vLLM calls while selecting a backend, on a DeepSeek-V3-shaped config.

vLLM 0.33's CUDA platform checks a user-selected backend with
``backend_cls.validate_configuration(device_capability=cap, **selector_config._asdict())``
and refuses it with the returned reasons; these tests make the same call.
"""

from __future__ import annotations

import pytest
import torch

SM120 = (12, 0)
SM121 = (12, 1)


@pytest.fixture(scope="module")
def backend_cls():
    from mla_plugin.backend import XqaMlaBackend

    return XqaMlaBackend


def _reasons(backend_cls, model, capability=SM120, **overrides) -> list[str]:
    """What vLLM's selector gets for the tiny DeepSeek V3 with the given changes."""
    from vllm.platforms.interface import DeviceCapability
    from vllm.v1.attention.selector import AttentionSelectorConfig

    fields = dict(
        head_size=model["kv_lora_rank"] + model["qk_rope_head_dim"],
        dtype=torch.bfloat16,
        kv_cache_dtype="auto",
        block_size=None,
        use_mla=True,
    )
    fields.update(overrides)
    selector_config = AttentionSelectorConfig(**fields)
    return backend_cls.validate_configuration(
        device_capability=DeviceCapability(*capability), **selector_config._asdict()
    )


def test_name_impl_and_builder(backend_cls):
    from vllm.model_executor.layers.attention.mla_attention import QueryLenSupport
    from vllm.v1.attention.backend import AttentionCGSupport

    from mla_plugin.backend import XqaMlaImpl, XqaMlaMetadataBuilder

    assert backend_cls.get_name() == "MLA_XQA_SM120"
    assert backend_cls.is_mla()
    assert backend_cls.get_impl_cls() is XqaMlaImpl
    assert backend_cls.get_builder_cls() is XqaMlaMetadataBuilder
    assert XqaMlaMetadataBuilder.query_len_support is QueryLenSupport.UNIFORM
    assert XqaMlaMetadataBuilder._cudagraph_support is AttentionCGSupport.UNIFORM_BATCH
    assert XqaMlaMetadataBuilder.supports_non_causal_multi_token_decode is True
    assert XqaMlaImpl.can_return_lse_for_decode is True
    assert XqaMlaImpl.lse_base_on_e is True


def test_declared_support(backend_cls):
    assert set(backend_cls.supported_dtypes) == {torch.bfloat16, torch.float16}
    assert set(backend_cls.supported_kv_cache_dtypes) == {
        "auto", "float16", "bfloat16", "fp8", "fp8_e4m3"
    }
    assert backend_cls.get_supported_head_sizes() == [576]
    assert backend_cls.get_supported_kernel_block_sizes() == [16, 32, 64, 128]
    assert backend_cls.supports_non_causal() is True
    assert backend_cls.supports_dcp() is True
    assert backend_cls.is_sparse() is False


@pytest.mark.parametrize("capability", [SM120, SM121])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8", "fp8_e4m3"])
@pytest.mark.parametrize("block_size", [None, 16, 32, 64, 128])
def test_supported_combinations(backend_cls, tiny_model_config, capability, dtype,
                                kv_cache_dtype, block_size):
    assert _reasons(backend_cls, tiny_model_config, capability, dtype=dtype,
                    kv_cache_dtype=kv_cache_dtype, block_size=block_size) == []


@pytest.mark.parametrize("dtype,kv_cache_dtype", [(torch.bfloat16, "bfloat16"),
                                                  (torch.float16, "float16")])
def test_16bit_cache_in_the_model_dtype(backend_cls, tiny_model_config, dtype,
                                        kv_cache_dtype):
    assert _reasons(backend_cls, tiny_model_config, dtype=dtype,
                    kv_cache_dtype=kv_cache_dtype) == []


def test_non_causal_is_supported(backend_cls, tiny_model_config):
    assert _reasons(backend_cls, tiny_model_config, use_non_causal=True) == []


def test_dcp_is_supported(backend_cls, tiny_model_config):
    assert _reasons(backend_cls, tiny_model_config, use_dcp=True) == []


def test_hopper_needs_the_test_switch(backend_cls, tiny_model_config, monkeypatch):
    monkeypatch.delenv("MLA_PLUGIN_ALLOW_SM90", raising=False)
    refused = _reasons(backend_cls, tiny_model_config, (9, 0))
    assert len(refused) == 1
    assert "compute capability 9.0 not supported" in refused[0]
    assert "MLA_PLUGIN_ALLOW_SM90=1" in refused[0]
    monkeypatch.setenv("MLA_PLUGIN_ALLOW_SM90", "1")
    assert _reasons(backend_cls, tiny_model_config, (9, 0)) == []


# Each refusal: (what changes, words that must name the feature, the alternative offered)
REFUSALS = {
    "head size": (dict(head_size=512), "head size 512 not supported",
                  "--attention-backend TRITON_MLA"),
    "fp32 model": (dict(dtype=torch.float32), "model dtype torch.float32 not supported",
                   "--dtype bfloat16"),
    "fp8_e5m2 cache": (dict(kv_cache_dtype="fp8_e5m2"),
                       "--kv-cache-dtype fp8_e5m2 not supported", "--kv-cache-dtype fp8"),
    "per-token-head cache": (dict(kv_cache_dtype="fp8_per_token_head"),
                             "--kv-cache-dtype fp8_per_token_head not supported",
                             "drop --kv-cache-dtype fp8_per_token_head"),
    "int8 per-token-head cache": (dict(kv_cache_dtype="int8_per_token_head"),
                                  "--kv-cache-dtype int8_per_token_head not supported",
                                  "--kv-cache-dtype fp8"),
    "cache dtype unlike the model": (dict(kv_cache_dtype="float16"),
                                     "--kv-cache-dtype float16 with a torch.bfloat16 model",
                                     "drop --kv-cache-dtype float16"),
    "block size": (dict(block_size=8), "--block-size 8 not supported", "--block-size 64"),
    "not MLA": (dict(use_mla=False), "a model without MLA not supported",
                "drop --attention-backend MLA_XQA_SM120"),
    "sparse MLA": (dict(use_sparse=True), "sparse MLA", "drop --attention-backend"),
    "sinks": (dict(has_sink=True), "attention sinks not supported",
              "drop --attention-backend"),
    "per-head quant scales": (dict(use_per_head_quant_scales=True),
                              "per-head KV quantisation scales not supported",
                              "drop --kv-cache-dtype"),
    "encoder attention": (dict(attn_type="encoder_only"),
                          "attention type encoder_only (encoder or cross attention)",
                          "drop --attention-backend"),
    "cross attention": (dict(attn_type="encoder_decoder"),
                        "attention type encoder_decoder", "drop --attention-backend"),
    "sliding window": (dict(has_sliding_window=True), "sliding-window attention not "
                       "supported", "drop --attention-backend"),
    "batch invariance": (dict(use_batch_invariant=True), "VLLM_BATCH_INVARIANT=1",
                         "--attention-backend TRITON_MLA"),
    "non-causal with DCP": (dict(use_non_causal=True, use_dcp=True),
                            "non-causal multi-token MLA with decode context parallelism",
                            "--decode-context-parallel-size 1"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusal_names_feature_and_alternative(backend_cls, tiny_model_config, case):
    change, feature, alternative = REFUSALS[case]
    refused = _reasons(backend_cls, tiny_model_config, **change)
    assert any(feature in r and alternative in r for r in refused), refused


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (10, 0), (11, 0), (9, 0)])
def test_other_gpus_are_refused(backend_cls, tiny_model_config, capability, monkeypatch):
    monkeypatch.delenv("MLA_PLUGIN_ALLOW_SM90", raising=False)
    refused = _reasons(backend_cls, tiny_model_config, capability)
    major, minor = capability
    assert refused and f"compute capability {major}.{minor} not supported" in refused[0]
    assert "--attention-backend TRITON_MLA" in refused[0]


def test_no_bare_vllm_reason_is_left(backend_cls, tiny_model_config):
    """Every refusal vLLM 0.33 can give us is explained (none of vLLM's terse texts)."""
    everything_wrong = dict(
        head_size=512, dtype=torch.float32, kv_cache_dtype="fp8_e5m2", block_size=8,
        has_sink=True, use_sparse=True, use_per_head_quant_scales=True,
        attn_type="encoder_only", has_sliding_window=True, use_batch_invariant=True,
        use_non_causal=True, use_dcp=True,
    )
    refused = _reasons(backend_cls, tiny_model_config, (8, 0), **everything_wrong)
    assert len(refused) == 12
    assert all("MLA_XQA_SM120" in r or "--" in r for r in refused), refused
    assert not any(r.endswith(" not supported") for r in refused), refused
