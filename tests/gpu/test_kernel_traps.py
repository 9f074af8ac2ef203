"""One regression test per trap of DESIGN.md ("the ten kernel bugs we must never ship", from
FlashInfer PR 2689), each built so that the bug it names would fail it. Traps 2 and 8 are also
checked without a GPU in tests/test_kernel_build.py."""

from __future__ import annotations

import pytest
import torch

from .cases import SOFTMAX_SCALE, Case, assert_close, make_inputs, measure, run_op

pytestmark = pytest.mark.gpu

DEV = "cuda"


def _paged(values: torch.Tensor, block_size: int, dtype: torch.dtype):
    """[B, S, 576] fp32 -> (cache [B*pages, bs, 576], block_table, seq_lens), pages reversed."""
    B, S, _ = values.shape
    pages = -(-S // block_size)
    cache = torch.zeros(B * pages, block_size, 576, device=DEV)
    table = torch.empty(B, pages, dtype=torch.int32, device=DEV)
    for b in range(B):
        for p in range(pages):
            page = B * pages - 1 - (b * pages + p)  # reversed order: page index != position
            chunk = values[b, p * block_size:(p + 1) * block_size]
            cache[page, :chunk.shape[0]] = chunk
            table[b, p] = page
    seq_lens = torch.full((B,), S, dtype=torch.int32, device=DEV)
    return cache.to(dtype), table, seq_lens


def _decode(q, cache, table, seq_lens, scale=SOFTMAX_SCALE, **kw):
    from mla_plugin import ops

    return ops.mla_decode(q, cache, table, seq_lens, softmax_scale=scale, return_lse=True, **kw)


def test_trap01_bf16_path_computes_in_bf16(error_log):
    # An FP8 element type left in the BF16 path quantises q/k/v/p to 3 mantissa bits: mean
    # error ~1e-2 instead of ~1e-4 here. The BF16 bound is far below what fp8 could reach.
    case = Case(dtype="bf16", heads=16, block_size=64, seq_lens=[300, 40])
    inp = make_inputs(case)
    out, lse = run_op(case, inp)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
    assert err.mean_abs < 1e-3, f"mean error {err.mean_abs:.2e}: not bf16 arithmetic"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_trap02_every_cache_dtype_builds_and_runs(dtype):
    values = torch.randn(2, 70, 576, device=DEV)
    cache, table, seq_lens = _paged(values, 32, dtype)
    qdt = torch.float16 if dtype == torch.float16 else torch.bfloat16
    q = torch.randn(2, 16, 576, device=DEV).to(qdt)
    out, lse = _decode(q, cache, table, seq_lens)
    assert out.dtype == qdt and torch.isfinite(out.float()).all() and torch.isfinite(lse).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_trap03_k_swizzle_reads_every_channel_where_tma_put_it(dtype):
    # Two tokens with K = +r and -r (r a random sign per channel); head h of request b puts all
    # its weight on channel c = 64 b + h, so it must attend token 0 iff r[c] > 0. Reading a
    # channel from the wrong swizzled position flips about half of the heads.
    r = torch.where(torch.rand(576, device=DEV) > 0.5, 1.0, -1.0)
    values = torch.zeros(9, 2, 576, device=DEV)
    values[:, 0] = r
    values[:, 1] = -r
    cache, table, seq_lens = _paged(values, 16, dtype)
    q = torch.zeros(9, 64, 576, device=DEV)
    for b in range(9):
        for h in range(64):
            q[b, h, 64 * b + h] = 8.0
    q = q.to(torch.bfloat16)
    out, _ = _decode(q, cache, table, seq_lens, scale=1.0)
    # Attending token 0 gives V = r[:512]; token 1 gives -r[:512]: the sign of out . r tells.
    picked_first = (out.float() * r[:512]).sum(-1) > 0  # [9, 64]
    expected = (r.view(9, 64) > 0)
    assert torch.equal(picked_first, expected), f"{int((picked_first != expected).sum())} heads read the wrong channel"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_trap04_v_parts_cover_all_512_channels_in_order(dtype):
    # One token: out must equal its V row exactly, channel by channel. A V box wider than the
    # swizzle span, or V parts in the wrong order, moves channels around.
    v = (torch.arange(512, device=DEV) % 31 - 15).float()  # integers: exact in bf16 and e4m3
    values = torch.zeros(1, 1, 576, device=DEV)
    values[0, 0, :512] = v
    cache, table, seq_lens = _paged(values, 64, dtype)
    q = torch.randn(1, 16, 576, device=DEV).to(torch.bfloat16)
    out, _ = _decode(q, cache, table, seq_lens)
    assert torch.equal(out.float(), v.expand(1, 16, 512))


def test_trap05_bf16_v_transpose_keeps_token_and_channel_apart():
    # 32 tokens (one BF16 tile) with V[t, c] = t + c/1024-ish distinct values and q = 0: uniform
    # attention, out = column means. A byte-wise transpose of 2-byte V would scramble them.
    t = torch.arange(32, device=DEV).float()[:, None]
    c = torch.arange(512, device=DEV).float()[None, :]
    v = (t * 4 + (c % 4)).to(torch.bfloat16).float()
    values = torch.zeros(1, 32, 576, device=DEV)
    values[0, :, :512] = v
    cache, table, seq_lens = _paged(values, 32, torch.bfloat16)
    q = torch.zeros(1, 16, 576, device=DEV, dtype=torch.bfloat16)
    out, _ = _decode(q, cache, table, seq_lens)
    expected = v.mean(0).expand(1, 16, 512)
    assert torch.allclose(out.float(), expected, atol=0.1, rtol=1e-2)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_trap06_token_loops_stop_at_the_tile_and_the_sequence(dtype, delta, error_log):
    # BF16 tiles hold 32 tokens, FP8 tiles 64: lengths at tile and page boundaries +-1, with
    # NaN in every slot past the length (make_inputs poisons them).
    tile = 32 if dtype == "bf16" else 64
    lens = [tile + delta, 2 * tile + delta, 128 + delta, 3]
    case = Case(dtype=dtype, heads=20, block_size=16 if delta else 128, seq_lens=lens, query_len=1)
    inp = make_inputs(case)
    out, lse = run_op(case, inp)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)


def test_trap07_fp8_v_producer_and_consumer_agree_on_layout():
    # FP8 V goes through ldmatrix.trans.b16 + byte permutes, with P stored in the matching token
    # order. One hot attention per head to a distinct token (scores +-30) must return exactly
    # that token's V row, for tokens in every position of a 64-token tile.
    S = 64
    values = torch.zeros(1, S, 576, device=DEV)
    key_dirs = torch.eye(S, 576, device=DEV)  # token t: K = e_t
    values[0, :, :] = key_dirs
    values[0, :, :512] += ((torch.arange(S, device=DEV)[:, None] * 3 + torch.arange(512, device=DEV)[None, :]) % 17 - 8).float() / 4
    values[0, :, :64] = key_dirs[:, :64]  # keep K's first 64 channels one-hot
    cache, table, seq_lens = _paged(values, 64, torch.float8_e4m3fn)
    q = torch.zeros(1, S, 576, device=DEV)
    q[0, torch.arange(S), torch.arange(S)] = 60.0
    out, _ = _decode(q.to(torch.bfloat16), cache, table, seq_lens, scale=1.0)
    expected = cache[0, :S, :512].float()  # page 0 holds the only page
    assert torch.allclose(out[0].float(), expected, atol=0.02), "FP8 V read in the wrong layout"


def test_trap09_accumulator_rows_follow_the_fragment_layout():
    # 32 heads (two m16 tiles, rows g and g+8), each sharply attending its own token: out[h]
    # must be V[h]. A wrong fragment-row mapping gives another head's row.
    S, H = 40, 32
    values = torch.zeros(1, S, 576, device=DEV)
    values[0, :, 512:] = torch.eye(S, 64, device=DEV)  # K rope part: token t = e_t
    values[0, :, :512] = torch.randn(S, 512, device=DEV).to(torch.bfloat16).float()
    cache, table, seq_lens = _paged(values, 16, torch.bfloat16)
    q = torch.zeros(1, H, 576, device=DEV)
    q[0, torch.arange(H), 512 + torch.arange(H)] = 40.0
    out, _ = _decode(q.to(torch.bfloat16), cache, table, seq_lens, scale=1.0)
    assert torch.allclose(out[0].float(), values[0, :H, :512], atol=1e-2)


@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("target", ["first", "last", "middle"])
def test_trap10_every_tile_is_loaded_before_use(block_size, target):
    # A long context over many ring wraps, attention concentrated on one token: out must be that
    # token's V. A prefetch that skips, repeats or mis-pages a tile returns something else.
    S = 5000
    pos = {"first": 0, "last": S - 1, "middle": 2777}[target]
    values = torch.randn(1, S, 576, device=DEV) * 0.1
    values[0, pos, 512:] = 0
    values[0, pos, 512] = 1.0
    cache, table, seq_lens = _paged(values, block_size, torch.bfloat16)
    q = torch.zeros(1, 16, 576, device=DEV)
    q[0, :, 512] = 60.0
    out, _ = _decode(q.to(torch.bfloat16), cache, table, seq_lens, scale=1.0)
    expected = cache[table[0, pos // block_size].long(), pos % block_size, :512].float()
    assert torch.allclose(out[0].float(), expected.expand(16, 512), atol=2e-2)
