"""fp32 PyTorch reference of the mla_decode op contract.

Used by the tests, by ``doctor``, and as the (slow) CPU path of ``ops.mla_decode``. It
takes the same tensors as the op and computes, per request b and query row t:

    extent  = seq_len - query_len + 1 + t   (causal)   or   seq_len   (non-causal)
    scores  = (q . k_l) * softmax_scale     for the first ``extent`` tokens l
    lse     = ln(sum exp(scores))           (natural log; -inf when extent <= 0)
    out     = softmax(scores) @ v           (zeros when extent <= 0)

where token l lives in page block_table[b, l // block_size], slot l % block_size, its
first 512 channels are the latent (K and V), the last 64 the RoPE part (K only). FP8
values are dequantised as value * scale (kv_scale for the cache, q_scale for an fp8 q).
Only the pages a request needs are gathered, and the slots past its length are zeroed
before use, so garbage block-table tails and unwritten slots are never read into the
result. Argument checking is ops.mla_decode's job; this module assumes valid input.
"""

from __future__ import annotations

import contextlib

import torch

from mla_plugin.geometry import HEAD_DIM, LATENT_DIM, ROPE_DIM  # noqa: F401

# The e4m3 opt-in path's q (csrc/decode/q_load.cuh, Q_E4M3_EXPONENT): each row scaled by a power
# of two so its |max| lands in [2^7, 2^8), then rounded to e4m3.
Q_E4M3_EXPONENT = 8


def emulate_e4m3_q(q16: torch.Tensor) -> torch.Tensor:
    """The e4m3 path's per-row quantisation of a 16-bit q, dequantised (fp32). The scale is a
    power of two (amax = m * 2^e, m in [0.5, 1): scale 2^(e - 8)), so this reproduces the
    kernel bit for bit; the exponent comes from the float's bits (amax is normal or 0). The
    default FP8 math keeps q in 16 bit and needs none of this."""
    with torch.cuda.device(q16.device) if q16.is_cuda else contextlib.nullcontext():
        q32 = q16.to(torch.float32)
        amax = q32.abs().amax(dim=-1, keepdim=True)
        biased = (amax.view(torch.int32) >> 23) & 0xFF  # frexp exponent e = biased - 126
        scale_bits = (biased - 126 - Q_E4M3_EXPONENT + 127) << 23
        scale = torch.where(amax > 0, scale_bits.view(torch.float32), torch.ones_like(amax))
        return (q32 / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale

# Gather the cache for this many fp32 elements at a time (~256 MiB) to bound memory.
_GATHER_CHUNK_ELEMENTS = 64 * 1024 * 1024


def mla_decode_reference(
    q,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    softmax_scale: float,
    kv_scale=None,
    q_scale=None,
    query_len: int = 1,
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (out [T, H, 512] fp32, lse [T, H] fp32) on the inputs' device.

    q: [T, H, 576] or the pair (q_nope [T, H, 512], q_pe [T, H, 64]); T = B * query_len.
    kv_cache: [num_blocks, block_size, 576] bf16 / fp16 / float8_e4m3fn / uint8 (fp8 bits).
    block_table: [B, max_blocks] integer; seq_lens: [B] integer.
    kv_scale, q_scale: float, 1-element tensor, or None (1.0).
    """
    return _reference(q, kv_cache, block_table, seq_lens, softmax_scale=softmax_scale,
                      kv_scale=kv_scale, q_scale=q_scale, query_len=query_len, causal=causal)


def _reference(q, kv_cache, block_table, seq_lens, *, softmax_scale, kv_scale=None, q_scale=None,
               query_len=1, causal=True, probe=None):
    """mla_decode_reference, with an optional probe for the tests' error model and emulator:
    probe(rows, scores, probs, values, out) is called once per chunk of requests (rows: the
    slice of requests) with scores [b, Q, H, L] (-inf where a row sees no token), probs
    [b, Q, H, L] (the softmax, 0 where unseen), values [b, L, 512] and out [b, Q, H, 512]."""
    q32 = _query_fp32(q, q_scale)
    num_rows, num_heads, _ = q32.shape
    batch = seq_lens.shape[0]
    if num_rows != batch * query_len:
        raise ValueError(
            f"q has {num_rows} rows; expected batch * query_len = {batch} * {query_len}"
        )
    device = q32.device
    out = torch.zeros(num_rows, num_heads, LATENT_DIM, dtype=torch.float32, device=device)
    lse = torch.full((num_rows, num_heads), float("-inf"), dtype=torch.float32, device=device)
    if batch == 0:
        return out, lse

    if kv_cache.dtype == torch.uint8:
        kv_cache = kv_cache.view(torch.float8_e4m3fn)
    kv_mult = _scale_fp32(kv_scale, device)
    block_size = kv_cache.shape[1]
    seq_lens = seq_lens.to(device=device, dtype=torch.int64)
    block_table = block_table.to(device=device, dtype=torch.int64)

    q32 = q32.view(batch, query_len, num_heads, HEAD_DIM)
    out = out.view(batch, query_len, num_heads, LATENT_DIM)
    lse = lse.view(batch, query_len, num_heads)

    # Requests go in chunks so the gathered fp32 cache stays near _GATHER_CHUNK_ELEMENTS.
    max_len = int(seq_lens.max().item()) if batch else 0
    padded_len = -(-max_len // block_size) * block_size
    rows_per_chunk = max(1, _GATHER_CHUNK_ELEMENTS // max(1, padded_len * HEAD_DIM))
    for start in range(0, batch, rows_per_chunk):
        rows = slice(start, min(batch, start + rows_per_chunk))
        chunk_out, chunk_lse = _attend(
            q32[rows], kv_cache, block_table[rows], seq_lens[rows],
            kv_mult=kv_mult, softmax_scale=float(softmax_scale),
            query_len=query_len, causal=causal,
            probe=None if probe is None else (lambda *a, rows=rows: probe(rows, *a)),
        )
        out[rows] = chunk_out
        lse[rows] = chunk_lse
    return (out.view(num_rows, num_heads, LATENT_DIM), lse.view(num_rows, num_heads))


def _attend(q32, kv_cache, block_table, seq_lens, *, kv_mult, softmax_scale, query_len, causal,
            probe=None):
    """One chunk of requests: q32 [b, Q, H, 576] -> (out [b, Q, H, 512], lse [b, Q, H])."""
    batch, _, num_heads, _ = q32.shape
    block_size = kv_cache.shape[1]
    max_len = int(seq_lens.max().item())
    num_pages = -(-max_len // block_size)
    device = q32.device
    if num_pages == 0:
        zeros = torch.zeros(batch, query_len, num_heads, LATENT_DIM, device=device)
        return zeros, torch.full((batch, query_len, num_heads), float("-inf"), device=device)

    # Pages a request does not need may hold garbage indices: read page 0 in their place
    # and zero those slots (and the unwritten tail of the last page) after the gather.
    page_ids = torch.arange(num_pages, device=device)
    pages_needed = (seq_lens + block_size - 1) // block_size
    page_valid = page_ids[None, :] < pages_needed[:, None]
    pages = torch.where(page_valid, block_table[:, :num_pages], torch.zeros_like(page_valid, dtype=torch.int64))
    tokens = kv_cache[pages].reshape(batch, num_pages * block_size, HEAD_DIM)
    token_ids = torch.arange(num_pages * block_size, device=device)
    token_valid = token_ids[None, :] < seq_lens[:, None]  # [b, L]
    keys = torch.where(token_valid[:, :, None], tokens.to(torch.float32) * kv_mult, 0.0)
    values = keys[..., :LATENT_DIM]

    # Row t of a causal request sees the first seq_len - query_len + 1 + t tokens.
    row_ids = torch.arange(query_len, device=device)
    if causal:
        extent = seq_lens[:, None] - query_len + 1 + row_ids[None, :]
    else:
        extent = seq_lens[:, None].expand(batch, query_len)
    visible = token_ids[None, None, :] < extent[:, :, None]  # [b, Q, L]

    flat_q = q32.reshape(batch, query_len * num_heads, HEAD_DIM)
    scores = torch.bmm(flat_q, keys.transpose(1, 2)) * softmax_scale  # [b, Q*H, L]
    scores = scores.view(batch, query_len, num_heads, -1)
    scores = scores.masked_fill(~visible[:, :, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf where a row sees nothing
    sees_tokens = torch.isfinite(lse)
    probs = torch.exp(scores - torch.where(sees_tokens, lse, 0.0)[..., None])
    probs = torch.where(visible[:, :, None, :], probs, 0.0)
    out = torch.bmm(probs.view(batch, query_len * num_heads, -1), values)
    out = out.view(batch, query_len, num_heads, LATENT_DIM)
    if probe is not None:
        probe(scores, probs, values, out)
    return out, lse


def _query_fp32(q, q_scale) -> torch.Tensor:
    if isinstance(q, (tuple, list)):
        q_nope, q_pe = q
        q = torch.cat((q_nope.to(torch.float32), q_pe.to(torch.float32)), dim=-1)
    else:
        q = q.to(torch.float32)
    if q_scale is not None:
        q = q * _scale_fp32(q_scale, q.device)
    return q


def _scale_fp32(scale, device) -> torch.Tensor | float:
    if scale is None:
        return 1.0
    if isinstance(scale, torch.Tensor):
        return scale.to(device=device, dtype=torch.float32).reshape(())
    return float(scale)
