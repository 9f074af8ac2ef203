"""One regression test per trap of DESIGN.md ("the ten kernel bugs we must never ship", from
FlashInfer PR 2689), each built so that the bug it names would fail it. Traps 2 and 8 are also
checked without a GPU in tests/test_kernel_build.py."""

from __future__ import annotations

import math

import pytest
import torch

from mla_plugin.reference import mla_decode_reference

from . import cases
from .cases import SOFTMAX_SCALE, Case, assert_close, make_inputs, measure, run_op

pytestmark = pytest.mark.gpu


def dev() -> torch.device:
    return cases.device()


def _paged(values: torch.Tensor, block_size: int, dtype: torch.dtype):
    """[B, S, 576] fp32 -> (cache [B*pages, bs, 576], block_table, seq_lens), pages reversed."""
    B, S, _ = values.shape
    pages = -(-S // block_size)
    cache = torch.zeros(B * pages, block_size, 576, device=dev())
    table = torch.empty(B, pages, dtype=torch.int32, device=dev())
    for b in range(B):
        for p in range(pages):
            page = B * pages - 1 - (b * pages + p)  # reversed order: page index != position
            chunk = values[b, p * block_size:(p + 1) * block_size]
            cache[page, :chunk.shape[0]] = chunk
            table[b, p] = page
    seq_lens = torch.full((B,), S, dtype=torch.int32, device=dev())
    return cache.to(dtype), table, seq_lens


def _decode(q, cache, table, seq_lens, scale=SOFTMAX_SCALE, **kw):
    return cases.decode(q, cache, table, seq_lens, softmax_scale=scale, return_lse=True, **kw)


@pytest.mark.mutation_check
def test_trap01_bf16_path_computes_in_bf16(error_log):
    # An FP8 element type left in the BF16 path quantises q/k/v/p to 3 mantissa bits: 16x
    # P's bf16 rounding error, and the mean check (measured / predicted mean error, 1 for bf16
    # arithmetic, limit about 1.5) fails at once. The case is large enough for it to apply.
    case = Case(dtype="bf16", heads=16, block_size=64, seq_lens=[300, 40], query_len=2)
    inp = make_inputs(case)
    out, lse = run_op(case, inp)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert not math.isnan(err.rho), f"{case}: the mean check did not apply ({err.notes})"
    assert_close(case, err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_trap02_every_cache_dtype_builds_and_runs(dtype):
    values = torch.randn(2, 70, 576, device=dev())
    cache, table, seq_lens = _paged(values, 32, dtype)
    qdt = torch.float16 if dtype == torch.float16 else torch.bfloat16
    q = torch.randn(2, 16, 576, device=dev()).to(qdt)
    out, lse = _decode(q, cache, table, seq_lens)
    assert out.dtype == qdt and torch.isfinite(out.float()).all() and torch.isfinite(lse).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_trap03_k_swizzle_reads_every_channel_where_tma_put_it(dtype):
    # Two tokens with K = +r and -r (r a random sign per channel); head h of request b puts all
    # its weight on channel c = 64 b + h, so it must attend token 0 iff r[c] > 0. Reading a
    # channel from the wrong swizzled position flips about half of the heads.
    r = torch.where(torch.rand(576, device=dev()) > 0.5, 1.0, -1.0)
    values = torch.zeros(9, 2, 576, device=dev())
    values[:, 0] = r
    values[:, 1] = -r
    cache, table, seq_lens = _paged(values, 16, dtype)
    q = torch.zeros(9, 64, 576, device=dev())
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
    v = (torch.arange(512, device=dev()) % 31 - 15).float()  # integers: exact in bf16 and e4m3
    values = torch.zeros(1, 1, 576, device=dev())
    values[0, 0, :512] = v
    cache, table, seq_lens = _paged(values, 64, dtype)
    q = torch.randn(1, 16, 576, device=dev()).to(torch.bfloat16)
    out, _ = _decode(q, cache, table, seq_lens)
    assert torch.equal(out.float(), v.expand(1, 16, 512))


def distinct_values(tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """[tokens, 512] fp32 values, exact in `dtype` and all different: (token, channel) ->
    value is one to one, so any mix-up of tokens and channels (a byte-wise transpose of
    2-byte V, swapped 16-byte chunks, a wrong ldmatrix row) changes some output."""
    t = torch.arange(tokens)[:, None]
    c = torch.arange(512)[None, :]
    if dtype == torch.bfloat16:  # 8 significant bits, fp32's exponent range
        mant, exp = 1 + (c % 128) / 128, (c // 128) + 4 * (t % 32) - 64
        sign = 1 - 2 * ((t // 32) % 2)
    else:  # fp16: 11 significant bits, normal exponents -14..15
        mant, exp = 1 + (c + 512 * (t % 2)) / 1024, (t // 2) % 16 - 14
        sign = 1 - 2 * ((t // 32) % 2)
    assert tokens <= 64
    v = sign * torch.ldexp(mant.expand(tokens, 512).to(torch.float64), exp.expand(tokens, 512)).to(torch.float32)
    assert torch.equal(v.to(dtype).to(torch.float32), v) and v.flatten().unique().numel() == v.numel()
    return v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_trap05_16bit_v_transpose_keeps_token_and_channel_apart(dtype):
    # 64 tokens (two 32-token tiles) with V[t, c] distinct for every (t, c), and head h
    # attending only token h (K's RoPE part one-hot, q_rope = 120 e_h, scale 1: every other
    # score is 120 lower, exp(-120) = 0 in fp32). P is then exactly 1 and 0, so out[h] must
    # equal V[h] bit for bit: any token/channel mix-up of the transposing V loads shows.
    S = 64
    v = distinct_values(S, dtype).to(dev())
    values = torch.zeros(1, S, 576, device=dev())
    values[0, :, :512] = v
    values[0, :, 512:] = torch.eye(S, 64, device=dev())
    cache, table, seq_lens = _paged(values, 16, dtype)
    q = torch.zeros(1, S, 576, device=dev())
    q[0, torch.arange(S), 512 + torch.arange(S)] = 120.0
    out, _ = _decode(q.to(dtype), cache, table, seq_lens, scale=1.0)
    wrong = (out[0].float() != v)
    assert not wrong.any(), (f"{int(wrong.sum())} of {wrong.numel()} outputs differ from their V; "
                             f"first at (head/token, channel) {wrong.nonzero()[0].tolist()}")


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
    values = torch.zeros(1, S, 576, device=dev())
    key_dirs = torch.eye(S, 576, device=dev())  # token t: K = e_t
    values[0, :, :] = key_dirs
    values[0, :, :512] += ((torch.arange(S, device=dev())[:, None] * 3 + torch.arange(512, device=dev())[None, :]) % 17 - 8).float() / 4
    values[0, :, :64] = key_dirs[:, :64]  # keep K's first 64 channels one-hot
    cache, table, seq_lens = _paged(values, 64, torch.float8_e4m3fn)
    q = torch.zeros(1, S, 576, device=dev())
    q[0, torch.arange(S), torch.arange(S)] = 60.0
    out, _ = _decode(q.to(torch.bfloat16), cache, table, seq_lens, scale=1.0)
    expected = cache[0, :S, :512].float()  # page 0 holds the only page
    assert torch.allclose(out[0].float(), expected, atol=0.02), "FP8 V read in the wrong layout"


def test_trap09_accumulator_rows_follow_the_fragment_layout():
    # 32 heads (two m16 tiles, rows g and g+8), each sharply attending its own token: out[h]
    # must be V[h]. A wrong fragment-row mapping gives another head's row.
    S, H = 40, 32
    values = torch.zeros(1, S, 576, device=dev())
    values[0, :, 512:] = torch.eye(S, 64, device=dev())  # K rope part: token t = e_t
    values[0, :, :512] = torch.randn(S, 512, device=dev()).to(torch.bfloat16).float()
    cache, table, seq_lens = _paged(values, 16, torch.bfloat16)
    q = torch.zeros(1, H, 576, device=dev())
    q[0, torch.arange(H), 512 + torch.arange(H)] = 40.0
    out, _ = _decode(q.to(torch.bfloat16), cache, table, seq_lens, scale=1.0)
    assert torch.allclose(out[0].float(), values[0, :H, :512], atol=1e-2)


GROUP = 32  # tokens per group: a tile of the kernel is one or more whole groups


@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_trap10_every_tile_is_loaded_before_use(dtype, block_size):
    # 5000 tokens, many ring wraps. Group g (tokens 32g..32g+31, 157 groups, the last of 8)
    # has V = K latent = e_g (channel g one-hot, exact in bf16 and e4m3) and head h scores it
    # b_hg = perm_h(g) / 16 (distinct per group, a permutation per head; q = b_h, scale 1).
    # So out[h, g] = n_g exp(b_hg) / sum, every group has its own channel and weight: a tile
    # skipped zeroes its channels, one loaded twice or from the wrong page or ring slot moves
    # weight between channels or changes a score by >= 1/16 (6.4% of the weight). Tolerance
    # per channel: P's rounding (2^-8 bf16, 2^-11 fp16 P of the FP8 path) + the bf16 output's
    # (2^-8) + 2^-12, at most 0.8%.
    S, H = 5000, 16
    groups = -(-S // GROUP)
    values = torch.zeros(1, S, 576, device=dev())
    tok = torch.arange(S, device=dev())
    values[0, tok, tok // GROUP] = 1.0
    cache, table, seq_lens = _paged(values, block_size, dtype)
    gen = torch.Generator().manual_seed(10)
    q = torch.zeros(1, H, 576)
    for h in range(H):
        q[0, h, :groups] = torch.randperm(groups, generator=gen).float() / 16
    q = q.to(dev()).to(torch.bfloat16)
    fp8 = dict(fp8_math="fp16") if dtype == torch.float8_e4m3fn else {}
    out, _ = _decode(q, cache, table, seq_lens, scale=1.0, **fp8)
    ref, _ = mla_decode_reference(q, cache, table, seq_lens, softmax_scale=1.0)
    u_p = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    tol = u_p + 2.0 ** -8 + 2.0 ** -12
    got, want = out[0, :, :groups].float(), ref[0, :, :groups]
    bad = (got - want).abs() > tol * want.abs()
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} (head, group) outputs off by more than "
                           f"{tol:.2%}; first (head, group) {bad.nonzero()[0].tolist()}: "
                           f"{float(got[bad][0]):.4g} vs {float(want[bad][0]):.4g}")
    assert torch.all(out[0, :, groups:] == 0), "channels no token has are not exactly 0"
