"""XqaMlaImpl: what it refuses when vLLM builds it, and forward_mqa's plumbing.

forward_mqa runs on CPU tensors here, so mla_decode takes its reference path: these
tests check what the impl hands the op (q forms, scales, query_len, causal, the padded
cache) against the fp32 reference called directly on the same data.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from mla_plugin.reference import mla_decode_reference

NUM_HEADS = 16
SCALE = 0.0723
FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def vllm_config():
    from vllm.config import VllmConfig

    return VllmConfig()


@contextlib.contextmanager
def _current(config):
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(config):
        yield


def _impl_kwargs(**overrides):
    from vllm.v1.attention.backend import AttentionType

    kwargs = dict(
        num_heads=NUM_HEADS, head_size=576, scale=SCALE, num_kv_heads=1,
        alibi_slopes=None, sliding_window=None, kv_cache_dtype="auto",
        logits_soft_cap=None, attn_type=AttentionType.DECODER,
        kv_sharing_target_layer_name=None, q_lora_rank=192, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, qk_head_dim=192, v_head_dim=128,
        kv_b_proj=None,
    )
    kwargs.update(overrides)
    return kwargs


def _make_impl(config, **overrides):
    from mla_plugin.backend import XqaMlaImpl

    with _current(config):
        return XqaMlaImpl(**_impl_kwargs(**overrides))


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "bfloat16", "fp8", "fp8_e4m3"])
def test_builds_for_supported_caches(vllm_config, kv_cache_dtype):
    impl = _make_impl(vllm_config, kv_cache_dtype=kv_cache_dtype)
    # BF16 q even with an FP8 cache: the kernel quantises q per row itself.
    assert impl.supports_quant_query_input is False
    assert impl.can_return_lse_for_decode is True


IMPL_REFUSALS = {
    "alibi": (dict(alibi_slopes=[0.5] * NUM_HEADS), NotImplementedError, "ALiBi"),
    "sliding window": (dict(sliding_window=128), NotImplementedError,
                       "sliding-window attention"),
    "logits soft cap": (dict(logits_soft_cap=30.0), NotImplementedError, "logits soft cap"),
    "encoder": (dict(attn_type="encoder"), NotImplementedError, "attention type encoder"),
    "kv sharing": (dict(kv_sharing_target_layer_name="model.layers.0.attn"),
                   NotImplementedError, "KV-cache sharing"),
    "per-token-head cache": (dict(kv_cache_dtype="fp8_per_token_head"), ValueError,
                             "--kv-cache-dtype fp8_per_token_head not supported"),
    "fp8_e5m2 cache": (dict(kv_cache_dtype="fp8_e5m2"), ValueError,
                       "--kv-cache-dtype fp8_e5m2 not supported"),
    "head size": (dict(head_size=320), ValueError, "head size 320 not supported"),
    "latent dims": (dict(kv_lora_rank=256, head_size=576, qk_rope_head_dim=320),
                    ValueError, "kv_lora_rank=256"),
}


@pytest.mark.parametrize("case", IMPL_REFUSALS, ids=list(IMPL_REFUSALS))
def test_impl_refusals(vllm_config, case):
    change, error, feature = IMPL_REFUSALS[case]
    with pytest.raises(error) as info:
        _make_impl(vllm_config, **change)
    message = str(info.value)
    assert feature in message
    assert "MLA_XQA_SM120" in message or "--attention-backend" in message


def test_too_many_speculative_tokens_are_refused(vllm_config, monkeypatch):
    import mla_plugin.backend as backend

    monkeypatch.setattr(backend, "max_decode_query_len", lambda config: 9)
    with pytest.raises(ValueError, match="9 query tokens per decode request") as info:
        _make_impl(vllm_config)
    assert "num_speculative_tokens <= 7" in str(info.value)


def test_unsupported_gpu_is_refused_at_construction(vllm_config, monkeypatch):
    import mla_plugin.backend as backend
    from vllm.platforms.interface import DeviceCapability

    monkeypatch.delenv("MLA_PLUGIN_ALLOW_SM90", raising=False)
    monkeypatch.setattr(backend.current_platform, "is_cuda", lambda: True)
    monkeypatch.setattr(backend.current_platform, "get_device_capability",
                        lambda device_id=0: DeviceCapability(8, 9))
    with pytest.raises(ValueError, match="compute capability 8.9 not supported"):
        _make_impl(vllm_config)


# ---- forward_mqa plumbing -------------------------------------------------------------

def _metadata(block_table, seq_lens, *, query_len, causal=True):
    from vllm.model_executor.layers.attention.mla_attention import (
        MLACommonDecodeMetadata,
        MLACommonMetadata,
    )

    batch = seq_lens.shape[0]
    rows = batch * query_len
    return MLACommonMetadata(
        num_reqs=batch, max_query_len=query_len, max_seq_len=int(seq_lens.max()),
        num_actual_tokens=rows,
        query_start_loc=torch.arange(0, rows + 1, query_len, dtype=torch.int32),
        slot_mapping=torch.zeros(rows, dtype=torch.int64), num_decodes=batch,
        num_decode_tokens=rows, num_prefills=0, causal=causal,
        decode=MLACommonDecodeMetadata(block_table=block_table, seq_lens=seq_lens,
                                       dcp_tot_seq_lens=None),
    )


def _paged_case(*, batch, query_len, block_size=16, dtype=torch.bfloat16,
                padded_stride=False, seed=0):
    """Random cache (maybe with padded blocks), shuffled pages, ragged lengths."""
    gen = torch.Generator().manual_seed(seed)
    max_blocks = 6
    num_blocks = batch * max_blocks + 3
    block_elems = block_size * 576 + (64 if padded_stride else 0)
    storage = torch.randn(num_blocks * block_elems, generator=gen).to(
        torch.bfloat16 if dtype == FP8 else dtype
    )
    if dtype == FP8:
        storage = (storage.float() * 4).to(FP8)
    kv_cache = storage.as_strided((num_blocks, block_size, 576), (block_elems, 576, 1))
    block_table = torch.randperm(num_blocks, generator=gen)[: batch * max_blocks]
    block_table = block_table.view(batch, max_blocks).to(torch.int32)
    seq_lens = torch.randint(query_len, max_blocks * block_size + 1, (batch,),
                             generator=gen).to(torch.int32)
    return kv_cache, block_table, seq_lens


def _vllm_style_query(rows, *, seed=1):
    """(q_nope, q_pe) as vLLM 0.33's MLA layer makes them: q_pe a strided slice of q."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, NUM_HEADS, 128 + 64, generator=gen).to(torch.bfloat16)
    q_pe = q[..., 128:]  # strides (H*192, 192, 1)
    q_nope = torch.randn(NUM_HEADS, rows, 512, generator=gen).to(torch.bfloat16)
    return q_nope.transpose(0, 1), q_pe  # q_nope strides (512, rows*512, 1)


def _layer(k_scale=1.0, q_scale=1.0):
    return SimpleNamespace(_k_scale=torch.tensor(k_scale), _q_scale=torch.tensor(q_scale))


def _assert_matches_reference(out, lse, expected_out, expected_lse):
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(out, expected_out.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("padded_stride", [False, True], ids=["packed", "padded-stride"])
def test_forward_mqa_tuple_query(vllm_config, padded_stride):
    impl = _make_impl(vllm_config)
    kv_cache, block_table, seq_lens = _paged_case(batch=3, query_len=1,
                                                  padded_stride=padded_stride)
    q_nope, q_pe = _vllm_style_query(3)
    assert not q_nope.is_contiguous() and not q_pe.is_contiguous()
    out, lse = impl.forward_mqa((q_nope, q_pe), kv_cache,
                                _metadata(block_table, seq_lens, query_len=1), _layer())
    assert out.shape == (3, NUM_HEADS, 512) and lse.shape == (3, NUM_HEADS)
    expected = mla_decode_reference(torch.cat((q_nope, q_pe), -1), kv_cache, block_table,
                                    seq_lens, softmax_scale=SCALE)
    _assert_matches_reference(out, lse, *expected)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "non-causal"])
def test_forward_mqa_query_len_2(vllm_config, causal):
    impl = _make_impl(vllm_config)
    kv_cache, block_table, seq_lens = _paged_case(batch=4, query_len=2, seed=3)
    q_nope, q_pe = _vllm_style_query(8, seed=4)
    out, lse = impl.forward_mqa(
        (q_nope, q_pe), kv_cache,
        _metadata(block_table, seq_lens, query_len=2, causal=causal), _layer(),
    )
    q = torch.cat((q_nope, q_pe), -1)
    expected = mla_decode_reference(q, kv_cache, block_table, seq_lens,
                                    softmax_scale=SCALE, query_len=2, causal=causal)
    _assert_matches_reference(out, lse, *expected)
    other = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=SCALE,
                                 query_len=2, causal=not causal)
    # The flag reached the op: the first row of each request differs between the two.
    assert not torch.allclose(out[0::2].float(), other[0][0::2].to(torch.bfloat16).float())


def test_forward_mqa_fp8_cache_bf16_query(vllm_config):
    impl = _make_impl(vllm_config, kv_cache_dtype="fp8")
    kv_cache, block_table, seq_lens = _paged_case(batch=3, query_len=1, dtype=FP8)
    q_nope, q_pe = _vllm_style_query(3)
    out, lse = impl.forward_mqa((q_nope, q_pe), kv_cache,
                                _metadata(block_table, seq_lens, query_len=1),
                                _layer(k_scale=0.25))
    expected = mla_decode_reference(torch.cat((q_nope, q_pe), -1), kv_cache, block_table,
                                    seq_lens, softmax_scale=SCALE, kv_scale=0.25)
    _assert_matches_reference(out, lse, *expected)


def test_forward_mqa_fp8_query(vllm_config):
    impl = _make_impl(vllm_config, kv_cache_dtype="fp8")
    kv_cache, block_table, seq_lens = _paged_case(batch=2, query_len=1, dtype=FP8,
                                                  padded_stride=True)
    q_nope, q_pe = _vllm_style_query(2)
    q = (torch.cat((q_nope, q_pe), -1).float() * 2).to(FP8)
    out, lse = impl.forward_mqa(q, kv_cache, _metadata(block_table, seq_lens, query_len=1),
                                _layer(k_scale=0.5, q_scale=0.125))
    expected = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=SCALE,
                                    kv_scale=0.5, q_scale=0.125)
    _assert_matches_reference(out, lse, *expected)


def test_forward_mqa_refuses_causal_multi_token_with_dcp(vllm_config):
    impl = _make_impl(vllm_config)
    impl.dcp_world_size = 2
    kv_cache, block_table, seq_lens = _paged_case(batch=2, query_len=2)
    q_nope, q_pe = _vllm_style_query(4)
    with pytest.raises(NotImplementedError, match="decode context parallelism") as info:
        impl.forward_mqa((q_nope, q_pe), kv_cache,
                         _metadata(block_table, seq_lens, query_len=2), _layer())
    assert "--decode-context-parallel-size 1" in str(info.value)
    # Non-causal blocks need no per-row extents: fine under DCP.
    out, _ = impl.forward_mqa((q_nope, q_pe), kv_cache,
                              _metadata(block_table, seq_lens, query_len=2, causal=False),
                              _layer())
    assert torch.isfinite(out.float()).all()
