"""Input builders and error measures shared by the GPU tests (no test functions here).

Every case is built the hard way: pages in random order, block-table tails full of garbage
(negative, huge and NaN-page indices), unwritten slots and unused pages poisoned with NaN, so
the kernel is right only if it reads exactly the tokens the contract allows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

LATENT = 512
ROPE = 64
HEAD_DIM = LATENT + ROPE
E4M3_MAX = 448.0
SOFTMAX_SCALE = 1.0 / math.sqrt(192)  # DeepSeek: qk_nope 128 + qk_rope 64


@dataclass
class Case:
    dtype: str  # "bf16" | "fp16" | "fp8" (cache); q is bf16 unless q_fp8
    heads: int
    block_size: int
    seq_lens: list[int]
    query_len: int = 1
    causal: bool = True
    kv_scale: float = 1.0
    q_fp8: bool = False  # q arrives as e4m3 with a q_scale
    strided_q: bool = True  # q_nope / q_pe as the strided views vLLM passes
    padded_cache: bool = False  # kv_cache.stride(0) > block_size * 576
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return len(self.seq_lens)

    def __str__(self) -> str:
        lens = self.seq_lens if len(self.seq_lens) <= 4 else f"{self.seq_lens[:3]}..x{len(self.seq_lens)}"
        return (f"{self.dtype} H{self.heads} bs{self.block_size} ql{self.query_len}"
                f"{'' if self.causal else ' noncausal'} lens{lens}")


@dataclass
class Inputs:
    q: object  # tensor or (q_nope, q_pe)
    kv_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    kv_scale: object
    q_scale: object
    q_for_reference: object  # q exactly as the kernel multiplies it (fp8 quantisation emulated)


def _cache_dtype(dtype: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}[dtype]


def _q_dtype(case: Case) -> torch.dtype:
    return torch.float16 if case.dtype == "fp16" else torch.bfloat16


def make_inputs(case: Case, device="cuda") -> Inputs:
    # Some torch ops launch on the current device: build everything with `device` current.
    device = torch.device(device)
    with torch.cuda.device(device) if device.type == "cuda" else _no_device():
        return _make_inputs(case, device)


def _make_inputs(case: Case, device: torch.device) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(case.seed)
    B, H, T = case.batch, case.heads, case.batch * case.query_len
    bs = case.block_size
    pages_per_req = [math.ceil(s / bs) for s in case.seq_lens]
    max_pages = max(1, max(pages_per_req)) + 3  # table wider than needed: garbage tail
    used = sum(pages_per_req)
    num_blocks = used + 5  # spare pages, poisoned
    cache_dtype = _cache_dtype(case.dtype)

    # Values: K/V ~ N(0, 1) (fp8: scaled into e4m3's range and stored quantised).
    values = torch.randn(num_blocks, bs, HEAD_DIM, generator=gen)
    stride0 = bs * HEAD_DIM + (64 if case.padded_cache else 0)
    storage = torch.empty(num_blocks * stride0, dtype=torch.float32)
    cache32 = storage.as_strided((num_blocks, bs, HEAD_DIM), (stride0, HEAD_DIM, 1))
    cache32.copy_(values / case.kv_scale if case.dtype == "fp8" else values)

    # Random page order; the rest of each row and the unused pages are garbage.
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.randint(-(2**30), 2**30, (B, max_pages), generator=gen, dtype=torch.int32)
    table[:, -1] = -1
    spare = perm[used:]
    taken = 0
    for b, n in enumerate(pages_per_req):
        table[b, :n] = perm[taken:taken + n].to(torch.int32)
        taken += n
        if n < max_pages:  # a valid-but-poisoned page right after the used ones
            table[b, n] = int(spare[0])
    poisoned = torch.zeros(num_blocks, bs, dtype=torch.bool)
    poisoned[spare] = True
    for b, s in enumerate(case.seq_lens):  # unwritten slots of each request's last page
        n = pages_per_req[b]
        if n and s % bs:
            poisoned[int(table[b, n - 1]), s % bs:] = True
    cache32[poisoned] = float("nan")

    # The cache in its dtype (fp8: NaN stays NaN, 0x7f).
    cache_storage = torch.empty(num_blocks * stride0, dtype=cache_dtype, device=device)
    kv_cache = cache_storage.as_strided((num_blocks, bs, HEAD_DIM), (stride0, HEAD_DIM, 1))
    kv_cache.copy_(cache32.to(device).to(cache_dtype))

    # q: N(0, 1) like absorbed DeepSeek queries after normalisation.
    q32 = torch.randn(T, H, HEAD_DIM, generator=gen).to(device)
    if case.q_fp8:
        q_scale = float(q32.abs().max()) / E4M3_MAX
        q8 = (q32 / q_scale).to(torch.float8_e4m3fn)
        q = q8
        q_ref = q8.to(torch.float32) * q_scale
        q_scale_arg = torch.tensor([q_scale], dtype=torch.float32, device=device)
    else:
        qd = q32.to(_q_dtype(case))
        if case.strided_q:
            # vLLM: ql_nope written through a transposed bmm output, q_pe a view into [T, H, 192].
            nope_buf = torch.empty(H, T, LATENT, dtype=qd.dtype, device=device)
            nope_buf.copy_(qd[..., :LATENT].transpose(0, 1))
            pe_buf = torch.empty(T, H, 192, dtype=qd.dtype, device=device)
            pe_buf[..., 128:].copy_(qd[..., LATENT:])
            q = (nope_buf.transpose(0, 1), pe_buf[..., 128:])
        else:
            q = qd
        # The default FP8 math keeps q in 16 bit; the e4m3 opt-in quantises it per row (emulated).
        e4m3 = case.dtype == "fp8" and os.environ.get("MLA_PLUGIN_FP8_MATH") == "e4m3"
        q_ref = emulate_kernel_q(qd) if e4m3 else qd.to(torch.float32)
        q_scale_arg = None

    kv_scale_arg = (torch.tensor([case.kv_scale], dtype=torch.float32, device=device)
                    if case.dtype == "fp8" else None)
    seq_lens = torch.tensor(case.seq_lens, dtype=torch.int32, device=device)
    return Inputs(q, kv_cache, table.to(device), seq_lens, kv_scale_arg, q_scale_arg, q_ref)


Q_FP8_EXPONENT = 8  # csrc/decode_kernel.cuh: a row's |q| max lands in [2^7, 2^8)


def emulate_kernel_q(q16: torch.Tensor) -> torch.Tensor:
    """The kernel's per-row e4m3 quantisation of a 16-bit q, dequantised. The scale is a power
    of two (amax = m * 2^e, m in [0.5, 1): scale 2^(e - 8)), so this is exact, bit for bit.
    The exponent comes from the float's bits (amax is a normal number or 0)."""
    with torch.cuda.device(q16.device) if q16.is_cuda else _no_device():
        q32 = q16.to(torch.float32)
        amax = q32.abs().amax(dim=-1, keepdim=True)
        biased = (amax.view(torch.int32) >> 23) & 0xFF  # frexp exponent e = biased - 126
        scale_bits = (biased - 126 - Q_FP8_EXPONENT + 127) << 23
        scale = torch.where(amax > 0, scale_bits.view(torch.float32), torch.ones_like(amax))
        return (q32 / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale


class _no_device:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_op(case: Case, inp: Inputs, **kw):
    from mla_plugin import ops

    return ops.mla_decode(inp.q, inp.kv_cache, inp.block_table, inp.seq_lens,
                          softmax_scale=SOFTMAX_SCALE, kv_scale=inp.kv_scale, q_scale=inp.q_scale,
                          query_len=case.query_len, causal=case.causal, return_lse=True, **kw)


def run_reference(case: Case, inp: Inputs):
    from mla_plugin.reference import mla_decode_reference

    with torch.cuda.device(inp.kv_cache.device):
        return mla_decode_reference(inp.q_for_reference, inp.kv_cache, inp.block_table, inp.seq_lens,
                                    softmax_scale=SOFTMAX_SCALE, kv_scale=inp.kv_scale,
                                    query_len=case.query_len, causal=case.causal)


def value_bound(case: Case, inp: Inputs) -> float:
    """max |V| over the tokens the requests can see (dequantised)."""
    vmax = 0.0
    bs = case.block_size
    for b, s in enumerate(case.seq_lens):
        n = math.ceil(s / bs)
        if n == 0:
            continue
        pages = inp.block_table[b, :n].long()
        v = inp.kv_cache[pages].reshape(-1, HEAD_DIM)[:s, :LATENT].to(torch.float32)
        vmax = max(vmax, float(v.abs().max()))
    scale = case.kv_scale if case.dtype == "fp8" else 1.0
    return vmax * scale


# FP8 tolerance, derived: with q quantised exactly as the reference sees it, the one
# remaining rounding is P (p * 2^8 stored as e4m3: relative error <= 2^-4, since e4m3 keeps
# 3 mantissa bits). out = sum(p_i (1 + e_i) v_i) / sum(p_i), so |out - ref| <= 2^-4 max|v|.
# The bf16 output adds 2^-9 |ref|; fp32 accumulation order adds ~1e-6 relative.
FP8_P_RELATIVE_ERROR = 2.0 ** -4
BF16_MAX_ABS = 2e-2
LSE_MAX_ABS = 1e-3


@dataclass
class Errors:
    max_abs: float
    mean_abs: float
    lse_max_abs: float
    nan_count: int
    bound: float
    empty_rows_ok: bool  # rows that see no token: output exactly 0, lse exactly -inf


def measure(case: Case, inp: Inputs, out: torch.Tensor, lse: torch.Tensor) -> Errors:
    ref_out, ref_lse = run_reference(case, inp)
    out32 = out.to(torch.float32)
    diff = (out32 - ref_out).abs()
    seen = torch.isfinite(ref_lse)
    lse_diff = (lse[seen] - ref_lse[seen]).abs()
    if case.dtype == "fp8":
        bound = FP8_P_RELATIVE_ERROR * value_bound(case, inp) + 2.0 ** -8 * float(ref_out.abs().max()) + 1e-4
    else:
        bound = BF16_MAX_ABS
    return Errors(
        max_abs=float(diff.max()) if diff.numel() else 0.0,
        mean_abs=float(diff.mean()) if diff.numel() else 0.0,
        lse_max_abs=float(lse_diff.max()) if lse_diff.numel() else 0.0,
        nan_count=int(torch.isnan(out32).sum()) + int(torch.isnan(lse).sum()),
        bound=bound,
        empty_rows_ok=bool(torch.all(lse[~seen] == float("-inf"))) and bool(torch.all(out32[~seen] == 0)),
    )


def assert_close(case: Case, err: Errors) -> None:
    assert err.nan_count == 0, f"{case}: {err.nan_count} NaN"
    assert err.empty_rows_ok, f"{case}: a row that sees no token is not zeros / -inf"
    assert err.max_abs <= err.bound, f"{case}: max abs error {err.max_abs:.3g} > {err.bound:.3g}"
    assert err.lse_max_abs <= LSE_MAX_ABS, f"{case}: lse error {err.lse_max_abs:.3g} > {LSE_MAX_ABS}"
