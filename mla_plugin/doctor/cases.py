"""`doctor --run`'s decode cases: their inputs, built the hard way, and their errors against
the fp32 reference. Needs torch; runs on any device (the CPU tests use it with a fake op).

Every case's inputs are built so that the kernel is right only if it reads exactly the
tokens the op contract allows:
- pages in random order (a permutation of the cache), so no request's pages are contiguous;
- a garbage block-table tail: right after each request's pages a valid page full of NaN,
  then huge and negative indices, and -1 in the last column;
- the unwritten slots of each request's last page, and the spare pages, hold NaN;
- every case has a seq_len 0 padding row (zeros out, lse -inf) except the one-request long
  context ones, and a ragged batch (lengths that are not multiples of the page, a 1-token
  request, lengths across page boundaries).

Values look like a real decode step: K/V ~ N(0, 1) (an FP8 cache stores x / 0.05 in e4m3,
a calibrated-looking scale that is not a power of two), q ~ N(0, 1) in bf16, softmax scale
1/sqrt(192) (DeepSeek: qk_nope 128 + rope 64).

What the output is compared with: the fp32 reference (mla_plugin.reference) on the same
cache, block table and lengths. With an FP8 cache the reference dequantises the cache itself
(value * kv_scale). The default FP8 math keeps q in 16 bit (the kernel converts the cache to
f16 exactly), so the reference takes the caller's q and what remains is P in f16 and the bf16
output. Under the opt-in e4m3 math (MLA_PLUGIN_FP8_MATH=e4m3) the kernel quantises each row
of q to e4m3 with a power-of-two scale, which emulate_kernel_q reproduces bit for bit, and P
is e4m3: that path has its own, looser tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mla_plugin.doctor.selftest import SOFTMAX_SCALE, FP8_KV_SCALE, SelfTestCase
from mla_plugin.geometry import HEAD_DIM, LATENT_DIM
from mla_plugin.reference import Q_E4M3_EXPONENT as Q_FP8_EXPONENT  # noqa: F401 (tests read it here)
from mla_plugin.reference import emulate_e4m3_q

SPARE_PAGES = 4  # NaN-filled pages beyond the ones requests use
GARBAGE_COLUMNS = 2  # block-table columns past the longest request's pages


@dataclass
class CaseInputs:
    q: torch.Tensor  # [T, H, 576] bf16, T = batch * query_len
    q_for_reference: torch.Tensor  # [T, H, 576] fp32: q as the kernel multiplies it
    kv_cache: torch.Tensor  # [num_blocks, page_size, 576] bf16 or float8_e4m3fn
    block_table: torch.Tensor  # [batch, max_pages] int32
    seq_lens: torch.Tensor  # [batch] int32
    kv_scale: torch.Tensor | None  # [1] fp32 for an fp8 cache


def e4m3_math() -> bool:
    """Whether this process's FP8 math is the e4m3 opt-in (the op reads the same setting)."""
    from mla_plugin import dispatch

    return dispatch.resolve_fp8_math() == "e4m3"


emulate_kernel_q = emulate_e4m3_q  # the e4m3 opt-in's q, as the kernel rounds it (mla_plugin.reference)


def build_inputs(case: SelfTestCase, device) -> CaseInputs:
    """The case's tensors on `device`, made on the CPU from the case's seed (the same bits
    on every machine), then copied."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(case.seed)
    page = case.page_size
    pages_per_request = [math.ceil(s / page) for s in case.seq_lens]
    used = sum(pages_per_request)
    num_blocks = used + SPARE_PAGES
    max_pages = max(pages_per_request) + GARBAGE_COLUMNS

    perm = torch.randperm(num_blocks, generator=gen)
    spare = perm[used:]
    table = torch.randint(-(2 ** 30), 2 ** 30, (case.batch, max_pages), generator=gen,
                          dtype=torch.int32)
    table[:, -1] = -1
    taken = 0
    for b, n in enumerate(pages_per_request):
        table[b, :n] = perm[taken:taken + n].to(torch.int32)
        table[b, n] = int(spare[b % len(spare)])  # valid index, NaN page: must not be read
        taken += n

    values = torch.randn(num_blocks, page, HEAD_DIM, generator=gen)
    poisoned = torch.zeros(num_blocks, page, dtype=torch.bool)
    poisoned[spare] = True
    for b, (s, n) in enumerate(zip(case.seq_lens, pages_per_request)):
        if n and s % page:  # the unwritten slots of the request's last page
            poisoned[int(table[b, n - 1]), s % page:] = True
    values[poisoned] = float("nan")

    kv_scale = None
    if case.dtype == "fp8":
        kv_cache = (values / FP8_KV_SCALE).to(torch.float8_e4m3fn)  # NaN stays NaN (0x7f)
        kv_scale = torch.tensor([FP8_KV_SCALE], dtype=torch.float32)
    else:
        kv_cache = values.to(torch.bfloat16)

    q = torch.randn(case.batch * case.query_len, case.heads, HEAD_DIM, generator=gen)
    q = q.to(torch.bfloat16)
    q_ref = emulate_kernel_q(q) if case.dtype == "fp8" and e4m3_math() else q.to(torch.float32)
    seq_lens = torch.tensor(case.seq_lens, dtype=torch.int32)
    return CaseInputs(q=q.to(device), q_for_reference=q_ref.to(device),
                      kv_cache=kv_cache.to(device), block_table=table.to(device),
                      seq_lens=seq_lens.to(device),
                      kv_scale=None if kv_scale is None else kv_scale.to(device))


def run_op(op, case: SelfTestCase, inputs: CaseInputs):
    """(out, lse) of the op under test, called as vLLM's forward_mqa calls it."""
    return op(inputs.q, inputs.kv_cache, inputs.block_table, inputs.seq_lens,
              softmax_scale=SOFTMAX_SCALE, kv_scale=inputs.kv_scale, query_len=case.query_len,
              causal=True, return_lse=True, max_seq_len=max(case.seq_lens))


def run_reference(reference, case: SelfTestCase, inputs: CaseInputs):
    return reference(inputs.q_for_reference, inputs.kv_cache, inputs.block_table, inputs.seq_lens,
                     softmax_scale=SOFTMAX_SCALE, kv_scale=inputs.kv_scale,
                     query_len=case.query_len, causal=True)


def _finite_max(x: torch.Tensor) -> float | None:
    x = x[torch.isfinite(x)]
    return float(x.max()) if x.numel() else None


def measure(out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor,
            ref_lse: torch.Tensor) -> dict:
    """The errors of (out, lse) against the reference, as plain numbers:
    max_abs: max |out - ref| over the rows that see tokens (NaN left out, counted apart);
    mean_rel: sum |out - ref| / sum |ref| over those rows (a mean relative error that does
      not blow up where ref is near 0);
    lse_max_abs: max |lse - ref_lse| over those rows;
    nan_count: NaN in out and lse; inf_count: inf in out, and in lse where a row sees tokens;
    padding_rows_ok: rows that see no token are exactly 0 with lse -inf."""
    out32 = out.to(torch.float32)
    lse = lse.to(torch.float32)
    seen = torch.isfinite(ref_lse)
    diff = (out32 - ref_out).abs()[seen]
    ok = torch.isfinite(diff)
    ref_sum = float(ref_out.abs()[seen][ok].sum())
    return {
        "max_abs": _finite_max(diff),
        "mean_rel": (float(diff[ok].sum()) / ref_sum) if ref_sum > 0 else None,
        "lse_max_abs": _finite_max((lse - ref_lse).abs()[seen]),
        "nan_count": int(torch.isnan(out32).sum()) + int(torch.isnan(lse).sum()),
        "inf_count": int(torch.isinf(out32).sum()) + int(torch.isinf(lse[seen]).sum()),
        "padding_rows_ok": bool(torch.all(out32[~seen] == 0)) and bool(
            torch.all(lse[~seen] == float("-inf"))),
        "rows_seeing_tokens": int(seen.sum()),
        "rows_seeing_none": int((~seen).sum()),
    }


def check_case(case: SelfTestCase, device, op, reference, sync=lambda: None) -> dict:
    """Build the case on `device`, run `op` and the reference, return measure()'s errors.
    Raises what the op raises (the caller records it)."""
    inputs = build_inputs(case, device)
    out, lse = run_op(op, case, inputs)
    sync()  # a launch failure surfaces here, in this case, not in the next one
    ref_out, ref_lse = run_reference(reference, case, inputs)
    return measure(out, lse, ref_out, ref_lse)
