"""The fp32 reference against hand-checked cases and an independent per-row loop."""

from __future__ import annotations

import math

import pytest
import torch

from mla_plugin.reference import mla_decode_reference

FP8 = torch.float8_e4m3fn


def _loop_reference(q, kv_cache, block_table, seq_lens, *, scale, query_len, causal):
    """Row by row, token by token in Python: slow, obviously right."""
    rows, heads, _ = q.shape
    block_size = kv_cache.shape[1]
    out = torch.zeros(rows, heads, 512)
    lse = torch.full((rows, heads), -math.inf)
    for b, seq_len in enumerate(seq_lens.tolist()):
        tokens = [kv_cache[int(block_table[b, i // block_size]), i % block_size].float()
                  for i in range(seq_len)]
        for t in range(query_len):
            extent = seq_len - query_len + 1 + t if causal else seq_len
            if extent <= 0:
                continue
            keys = torch.stack(tokens[:extent])
            scores = q[b * query_len + t].float() @ keys.T * scale  # [H, extent]
            lse[b * query_len + t] = torch.logsumexp(scores, -1)
            out[b * query_len + t] = torch.softmax(scores, -1) @ keys[:, :512]
    return out, lse


def _case(*, batch=3, heads=4, block_size=16, max_blocks=4, query_len=1, seed=0,
          dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = batch * max_blocks + 2
    kv_cache = torch.randn(num_blocks, block_size, 576, generator=gen).to(dtype)
    block_table = torch.randperm(num_blocks, generator=gen)[: batch * max_blocks]
    block_table = block_table.view(batch, max_blocks).to(torch.int32)
    seq_lens = torch.randint(query_len, max_blocks * block_size + 1, (batch,),
                             generator=gen).to(torch.int32)
    q = torch.randn(batch * query_len, heads, 576, generator=gen).to(dtype)
    return q, kv_cache, block_table, seq_lens


def test_one_token_gives_its_value_row_and_score():
    q, kv_cache, block_table, _ = _case(batch=1, heads=2)
    seq_lens = torch.tensor([1], dtype=torch.int32)
    out, lse = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.5)
    token = kv_cache[int(block_table[0, 0]), 0].float()
    assert torch.equal(out[0, 0], token[:512]) and torch.equal(out[0, 1], token[:512])
    torch.testing.assert_close(lse[0], (q[0].float() @ token) * 0.5)


def test_two_tokens_by_hand():
    kv_cache = torch.zeros(2, 16, 576)
    kv_cache[1, 0, 0] = 1.0  # token 0: k = e0, v = e0
    kv_cache[1, 1, 1] = 1.0  # token 1: k = e1, v = e1
    q = torch.zeros(1, 1, 576)
    q[0, 0, 0] = math.log(3.0)  # scores: ln 3 and 0 -> weights 3/4, 1/4
    block_table = torch.tensor([[1]], dtype=torch.int32)
    out, lse = mla_decode_reference(q, kv_cache, block_table,
                                    torch.tensor([2], dtype=torch.int32), softmax_scale=1.0)
    torch.testing.assert_close(out[0, 0, :2], torch.tensor([0.75, 0.25]))
    assert out[0, 0, 2:].abs().max() == 0
    torch.testing.assert_close(lse[0, 0], torch.tensor(math.log(4.0)))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("query_len", [1, 2, 3, 8])
@pytest.mark.parametrize("block_size", [16, 32])
def test_matches_the_loop_reference(causal, query_len, block_size):
    q, kv_cache, block_table, seq_lens = _case(query_len=query_len, block_size=block_size,
                                               seed=query_len)
    got = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1,
                               query_len=query_len, causal=causal)
    expected = _loop_reference(q, kv_cache, block_table, seq_lens, scale=0.1,
                               query_len=query_len, causal=causal)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_causal_rows_see_a_growing_prefix():
    q, kv_cache, block_table, _ = _case(batch=1, query_len=3)
    seq_lens = torch.tensor([10], dtype=torch.int32)
    q = q[:1].expand(3, -1, -1).contiguous()  # same query on each row
    causal = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1,
                                  query_len=3)
    for t, extent in enumerate((8, 9, 10)):
        one = mla_decode_reference(q[:1], kv_cache, block_table,
                                   torch.tensor([extent], dtype=torch.int32),
                                   softmax_scale=0.1)
        torch.testing.assert_close(causal[0][t], one[0][0])
        torch.testing.assert_close(causal[1][t], one[1][0])
    non_causal = mla_decode_reference(q, kv_cache, block_table, seq_lens,
                                      softmax_scale=0.1, query_len=3, causal=False)
    torch.testing.assert_close(non_causal[0][0], non_causal[0][2])  # all see 10 tokens
    torch.testing.assert_close(non_causal[0][2], causal[0][2])
    assert not torch.allclose(non_causal[0][0], causal[0][0])


def test_seq_len_zero_gives_zeros_and_minus_inf():
    q, kv_cache, block_table, _ = _case(batch=2)
    kv_cache[block_table[0].long()] = float("nan")  # pages of the padding row
    seq_lens = torch.tensor([0, 5], dtype=torch.int32)
    out, lse = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isneginf(lse[0]).all()
    assert torch.isfinite(out[1]).all() and torch.isfinite(lse[1]).all()


def test_all_rows_empty():
    q, kv_cache, block_table, _ = _case(batch=2)
    out, lse = mla_decode_reference(q, kv_cache, block_table,
                                    torch.zeros(2, dtype=torch.int32), softmax_scale=0.1)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


def test_causal_rows_that_see_no_token():
    q, kv_cache, block_table, _ = _case(batch=1, query_len=4)
    seq_lens = torch.tensor([2], dtype=torch.int32)  # rows 0, 1 see -1 and 0 tokens
    out, lse = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1,
                                    query_len=4)
    assert torch.equal(out[:2], torch.zeros_like(out[:2])) and torch.isneginf(lse[:2]).all()
    assert torch.isfinite(lse[2:]).all()


def test_garbage_past_the_length_is_not_read():
    q, kv_cache, block_table, _ = _case(batch=2, block_size=16, max_blocks=4)
    seq_lens = torch.tensor([20, 33], dtype=torch.int32)  # 2 and 3 pages used
    clean = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1)

    dirty_cache = kv_cache.clone()
    dirty_table = block_table.clone()
    # Unwritten slots in each request's last page, and whole unused pages: NaN.
    dirty_cache[int(block_table[0, 1]), 4:] = float("nan")
    dirty_cache[int(block_table[1, 2]), 1:] = float("nan")
    dirty_cache[block_table[0, 2:].long()] = float("nan")
    dirty_cache[int(block_table[1, 3])] = float("nan")
    # Table entries past the used pages: out of range either way.
    dirty_table[0, 2:] = torch.tensor([10**6, -7], dtype=torch.int32)
    dirty_table[1, 3] = -1
    dirty = mla_decode_reference(q, dirty_cache, dirty_table, seq_lens, softmax_scale=0.1)
    assert torch.isfinite(dirty[0]).all() and torch.isfinite(dirty[1]).all()
    assert torch.equal(dirty[0], clean[0]) and torch.equal(dirty[1], clean[1])


def test_fp8_cache_is_dequantised_with_kv_scale():
    q, kv_cache, block_table, seq_lens = _case(dtype=torch.float32)
    fp8_cache = (kv_cache * 8).to(FP8)
    dequantised = fp8_cache.float() * 0.125
    got = mla_decode_reference(q, fp8_cache, block_table, seq_lens, softmax_scale=0.1,
                               kv_scale=0.125)
    expected = mla_decode_reference(q, dequantised, block_table, seq_lens,
                                    softmax_scale=0.1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    as_tensor = mla_decode_reference(q, fp8_cache, block_table, seq_lens,
                                     softmax_scale=0.1, kv_scale=torch.tensor([0.125]))
    torch.testing.assert_close(as_tensor, got, rtol=0, atol=0)
    as_bits = mla_decode_reference(q, fp8_cache.view(torch.uint8), block_table, seq_lens,
                                   softmax_scale=0.1, kv_scale=0.125)
    torch.testing.assert_close(as_bits, got, rtol=0, atol=0)


def test_fp8_query_is_dequantised_with_q_scale():
    q, kv_cache, block_table, seq_lens = _case(dtype=torch.float32)
    fp8_q = (q * 4).to(FP8)
    got = mla_decode_reference(fp8_q, kv_cache.to(FP8), block_table, seq_lens,
                               softmax_scale=0.1, q_scale=torch.tensor(0.25))
    expected = mla_decode_reference(fp8_q.float() * 0.25, kv_cache.to(FP8), block_table,
                                    seq_lens, softmax_scale=0.1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_query_pair_equals_query_tensor():
    q, kv_cache, block_table, seq_lens = _case()
    whole = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1)
    pair = mla_decode_reference((q[..., :512], q[..., 512:]), kv_cache, block_table,
                                seq_lens, softmax_scale=0.1)
    torch.testing.assert_close(pair, whole, rtol=0, atol=0)


def test_chunked_gather_equals_one_chunk(monkeypatch):
    import mla_plugin.reference as reference

    q, kv_cache, block_table, seq_lens = _case(batch=5)
    whole = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1)
    monkeypatch.setattr(reference, "_GATHER_CHUNK_ELEMENTS", 1)  # one request per chunk
    chunked = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 1])
def test_probe_sees_each_chunk_softmax_values_and_output(monkeypatch, chunk):
    # The tests' error model (tests/gpu/bounds.py) reads the softmax through this probe.
    import mla_plugin.reference as reference

    if chunk:
        monkeypatch.setattr(reference, "_GATHER_CHUNK_ELEMENTS", chunk)
    q, kv_cache, block_table, seq_lens = _case(batch=4, query_len=2, heads=3)
    seq_lens[2] = 0  # a padding request
    seen = []

    def probe(rows, scores, probs, values, out):
        seen.append((rows, scores, probs, values, out))

    out, lse = reference._reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1,
                                    query_len=2, probe=probe)
    plain = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1, query_len=2)
    assert torch.equal(out, plain[0]) and torch.equal(lse, plain[1])
    covered = sorted(i for rows, *_ in seen for i in range(rows.start, rows.stop))
    assert covered == ([0, 1, 3] if chunk else [0, 1, 2, 3])  # an all-padding chunk has no softmax
    for rows, scores, probs, values, chunk_out in seen:
        b = rows.stop - rows.start
        assert probs.shape == scores.shape and probs.shape[:3] == (b, 2, 3)
        assert values.shape == (b, probs.shape[-1], 512)
        torch.testing.assert_close(torch.einsum("bqhl,blc->bqhc", probs, values), chunk_out)
        torch.testing.assert_close(chunk_out.reshape(-1, 3, 512), out[rows.start * 2:rows.stop * 2])
        visible = torch.isfinite(scores)
        assert torch.all(probs[~visible] == 0)
        sums = probs.sum(-1)
        lens = seq_lens[rows].long()
        torch.testing.assert_close(sums[lens > 0], torch.ones_like(sums[lens > 0]))
