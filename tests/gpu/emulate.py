"""A CPU (or GPU) emulation of the decode kernel's arithmetic, for proving the bounds of
tests/gpu/bounds.py tight without a GPU: the same online softmax over tiles (running max,
fp32 p = exp(s - max), the denominator from the unrounded p), P rounded exactly as the kernel
rounds it, fp32 accumulation, the output rounded to its dtype. (The kernel's fp32 rescaling
order and split-KV merge differ by fp32 roundings, 2^-24, which no bound depends on.) It reads the cache through the
reference's own gather (garbage table tails and poisoned slots never enter).

Mutations, to show the checks catch a worse kernel:
  p_drop_bits=N     the kernel's MLA_MUTATE_P_DROP_BITS: N lowest mantissa bits of each 16-bit
                    P cleared after rounding (no effect on e4m3 P, as in the kernel)
  p_fewer_bits=k    P rounded to nearest with k significant bits fewer than its element has
                    (k = 1: exactly twice the rounding error, unbiased)
  out_scale_ulps=N  the kernel's MLA_MUTATE_OUT_SCALE_ULPS: output x (1 + N 2^-9) before rounding
"""

from __future__ import annotations

import torch

from .bounds import OUT_TORCH, Arith

LATENT = 512
P_TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16}
SIGNIFICANT_BITS = {"bf16": 8, "fp16": 11, "fp8": 4}
E4M3_P_SCALE = 256.0  # the e4m3 path stores e4m3(256 p)


def round_significant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x rounded to nearest (ties to even) with `bits` significant bits (no exponent limits)."""
    m, e = torch.frexp(x)  # x = m 2^e, |m| in [0.5, 1)
    return torch.ldexp(torch.round(torch.ldexp(m, torch.full_like(e, bits))), e - bits)


def round_p(p: torch.Tensor, elem: str, *, p_drop_bits: int = 0, p_fewer_bits: int = 0):
    """P as the kernel stores it before P.V (p: fp32, <= 1)."""
    if p_fewer_bits:
        bits = SIGNIFICANT_BITS[elem] - p_fewer_bits
        if elem == "fp8":
            return round_significant(p * E4M3_P_SCALE, bits) / E4M3_P_SCALE
        return round_significant(p, bits)
    if elem == "fp8":
        return (p * E4M3_P_SCALE).to(torch.float8_e4m3fn).to(torch.float32) / E4M3_P_SCALE
    rounded = p.to(P_TORCH[elem])
    if p_drop_bits:
        bits = rounded.view(torch.int16) & ~((1 << p_drop_bits) - 1)
        rounded = bits.view(P_TORCH[elem])
    return rounded.to(torch.float32)


def emulated_decode(q_kernel, kv_cache, block_table, seq_lens, *, softmax_scale, kv_scale=None,
                    query_len=1, causal=True, arith: Arith, tile: int, p_drop_bits: int = 0,
                    p_fewer_bits: int = 0, out_scale_ulps: int = 0):
    """(out [T, H, 512] in arith's output dtype, lse [T, H] fp32), computed the kernel's way.
    q_kernel: q exactly as the kernel multiplies it (for the e4m3 path: quantised)."""
    from mla_plugin.reference import _reference

    parts = []

    def probe(rows, scores, probs, values, out):
        # The online softmax, vectorised: tile j's p are exp(s - R_j) with R_j the running
        # max after tile j (cummax of the tile maxima); the kernel's rescaling of its fp32
        # accumulator by exp(R_j - R_j+1) at each step sums to the weight exp(R_j - R_last).
        b, Q, H, L = scores.shape
        n_tiles = -(-L // tile)
        pad = n_tiles * tile - L
        S = torch.nn.functional.pad(scores.reshape(b, Q * H, L), (0, pad), value=float("-inf"))
        V = torch.nn.functional.pad(values, (0, 0, 0, pad))
        S = S.view(b, Q * H, n_tiles, tile)
        R = torch.cummax(S.amax(-1), dim=-1).values  # [b, QH, tiles]
        seen = torch.isfinite(R)
        R0 = torch.where(seen, R, 0.0)
        p = torch.exp(S - R0[..., None])  # 0 where s = -inf
        P = round_p(p, arith.p_elem, p_drop_bits=p_drop_bits, p_fewer_bits=p_fewer_bits)
        last = R0[..., -1:]
        w = torch.where(seen, torch.exp(R0 - last), 0.0)[..., None]
        num = torch.bmm((P * w).view(b, Q * H, -1), V)
        l = (p * w).sum((-1, -2))
        o = torch.where(l[..., None] > 0, num / l.clamp_min(1e-38)[..., None], 0.0)
        o = o * (1.0 + out_scale_ulps * 2.0 ** -9)
        lse = torch.where(l > 0, last[..., 0] + torch.log(l.clamp_min(1e-38)), float("-inf"))
        parts.append((rows, o.reshape(b * Q, H, LATENT), lse.reshape(b * Q, H)))

    ref_out, ref_lse = _reference(q_kernel, kv_cache, block_table, seq_lens, softmax_scale=softmax_scale,
                                  kv_scale=kv_scale, query_len=query_len, causal=causal, probe=probe)
    out = torch.zeros_like(ref_out)
    lse = torch.full_like(ref_lse, float("-inf"))
    for rows, o, s in parts:
        r = slice(rows.start * query_len, rows.stop * query_len)
        out[r], lse[r] = o, s
    return out.to(OUT_TORCH[arith.out_elem]), lse
