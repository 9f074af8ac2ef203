"""Input builders, the launch wrapper and the error measures shared by the GPU tests (no test
functions here; CPU-tested in tests/test_gpu_cases.py).

Every case is built the hard way: pages in random order, block-table tails full of garbage
(negative, huge and NaN-page indices), unwritten slots and unused pages poisoned with NaN, so
the kernel is right only if it reads exactly the tokens the contract allows.

The error checks are tests/gpu/bounds.py's: derived from the roundings the kernel's path
performs, scaled to each case's own softmax and values.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field

import torch

from mla_plugin.geometry import HEAD_DIM
from mla_plugin.geometry import LATENT_DIM as LATENT
from mla_plugin.geometry import ROPE_DIM as ROPE  # noqa: F401
from mla_plugin.reference import Q_E4M3_EXPONENT as Q_FP8_EXPONENT  # noqa: F401 (tests read it here)
from mla_plugin.reference import emulate_e4m3_q

from . import bounds, coverage

E4M3_MAX = 448.0
SOFTMAX_SCALE = 1.0 / math.sqrt(192)  # DeepSeek: qk_nope 128 + qk_rope 64
ELEMS = ("bf16", "fp16", "fp8")
TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}
ROWS_ENV = "MLA_PLUGIN_ROWS_PER_CTA"  # dispatch.ROWS_ENV (not imported: keeps this file light)

# Where the GPU tests put their tensors. "cuda" on the GPU machine; the CPU dry run of the GPU
# tests (tests/test_gpu_dry_run.py) sets "cpu" and runs the op against an emulated kernel.
DEVICE = "cuda"
# Set (to the mutation spec) by the emulated-GPU mode of tests/gpu/conftest.py: no kernel runs.
EMULATED: str | None = None


def device() -> torch.device:
    return torch.device(DEVICE)


@dataclass
class Case:
    dtype: str  # cache element: "bf16" | "fp16" | "fp8"
    heads: int
    block_size: int
    seq_lens: list[int]
    query_len: int = 1
    causal: bool = True
    kv_scale: float = 1.0
    q_dtype: str | None = None  # None: the cache's (bf16 for an fp8 cache); "fp8": e4m3 q + q_scale
    out_dtype: str | None = None  # None: q's (bf16 for an fp8 q); "fp16" with an fp8 q passes `out`
    fp8_math: str | None = None  # fp8 cache: "fp16" | "e4m3"; None: what the op would take
    rows: int | None = None  # forces MLA_PLUGIN_ROWS_PER_CTA (16 | 32) for the launch
    strided_q: bool = True  # q_nope / q_pe as the strided views vLLM passes (16-bit q)
    padded_cache: bool = False  # kv_cache.stride(0) > block_size * 576
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dtype not in ELEMS:
            raise ValueError(f"cache dtype {self.dtype!r} not in {ELEMS}")
        if self.q_elem not in ELEMS or self.out_elem not in ("bf16", "fp16"):
            raise ValueError(f"q {self.q_elem!r} / out {self.out_elem!r}")
        if self.dtype != "fp8" and (self.q_elem != self.dtype or self.fp8_math is not None):
            raise ValueError("a 16-bit cache takes q of its own dtype and no fp8_math")
        if self.q_elem != "fp8" and self.out_elem != self.q_elem:
            raise ValueError("a 16-bit q writes its own dtype")

    @property
    def batch(self) -> int:
        return len(self.seq_lens)

    @property
    def q_elem(self) -> str:
        return self.q_dtype or ("bf16" if self.dtype == "fp8" else self.dtype)

    @property
    def out_elem(self) -> str:
        return self.out_dtype or ("bf16" if self.q_elem == "fp8" else self.q_elem)

    @property
    def math(self) -> str | None:
        """The FP8 path the launch takes: fp8_math, else $MLA_PLUGIN_FP8_MATH, else "fp16"."""
        if self.dtype != "fp8":
            return None
        from mla_plugin import dispatch

        return dispatch.resolve_fp8_math(self.fp8_math)

    @property
    def mma(self) -> str:
        from mla_plugin import kernel_variants

        return kernel_variants.mma_for(self.dtype, self.math or "fp16")

    @property
    def arith(self) -> bounds.Arith:
        return bounds.arith_for(self.dtype, self.out_elem, self.math)

    def variant_dtypes(self) -> tuple[str, str, str, str]:
        """(kv, q, out, mma) of the kernel variant this case must launch."""
        return (self.dtype, self.q_elem, self.out_elem, self.mma)

    def __str__(self) -> str:
        lens = self.seq_lens if len(self.seq_lens) <= 4 else f"{self.seq_lens[:3]}..x{len(self.seq_lens)}"
        path = self.dtype
        if self.dtype == "fp8":
            path += f"/q{self.q_elem}/o{self.out_elem}/{self.fp8_math or 'default'}"
        return (f"{path} H{self.heads} bs{self.block_size} ql{self.query_len}"
                f"{'' if self.causal else ' noncausal'}{f' rows{self.rows}' if self.rows else ''} lens{lens}")


def case_for_variant(variant, block_size: int, seed: int = 0) -> Case:
    """A case that must launch `variant` (a kernel_variants.Variant): its dtypes, fp8_math from
    its mma, its rows per CTA forced. 20 heads x query_len 2 = 40 rows per request: partial row
    tiles at 16 and at 32 rows; a long request (split-KV), a page-boundary one, a padding row
    and a shortest one (seq_len = query_len)."""
    from mla_plugin import kernel_variants

    fp8_math = None
    if variant.kv == "fp8":
        fp8_math = {mma: name for name, mma in kernel_variants.FP8_MATH_MMA.items()}[variant.mma]
    return Case(dtype=variant.kv, heads=20, block_size=block_size,
                seq_lens=[1200 + 7 * block_size // 16, 2 * block_size + 1, 0, 2], query_len=2,
                kv_scale=0.5 if variant.kv == "fp8" else 1.0, q_dtype=variant.q, out_dtype=variant.out,
                fp8_math=fp8_math, rows=variant.rows, seed=seed)


@dataclass
class Inputs:
    q: object  # tensor or (q_nope, q_pe)
    kv_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    kv_scale: object
    q_scale: object
    q_caller: torch.Tensor  # [T, H, 576] fp32: the caller's q as numbers (an fp8 q times q_scale)
    q_kernel: torch.Tensor  # [T, H, 576] fp32: q as the kernel multiplies it (e4m3 path: quantised)

    @property
    def q_for_reference(self) -> torch.Tensor:
        return self.q_kernel


def on_device(dev):
    """torch.cuda.device(dev) for a real CUDA device (some torch ops launch on the current
    device), else nothing."""
    dev = torch.device(dev)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.device(dev)
    return contextlib.nullcontext()


def make_inputs(case: Case, device=None) -> Inputs:
    dev = torch.device(device or DEVICE)
    with on_device(dev):
        return _make_inputs(case, dev)


def _make_inputs(case: Case, device: torch.device) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(case.seed)
    B, H, T = case.batch, case.heads, case.batch * case.query_len
    bs = case.block_size
    pages_per_req = [math.ceil(s / bs) for s in case.seq_lens]
    max_pages = max(1, max(pages_per_req)) + 3  # table wider than needed: garbage tail
    used = sum(pages_per_req)
    num_blocks = used + 5  # spare pages, poisoned
    cache_dtype = TORCH_DTYPE[case.dtype]

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
    if case.q_elem == "fp8":
        q_scale = float(q32.abs().max()) / E4M3_MAX
        q8 = (q32 / q_scale).to(torch.float8_e4m3fn)
        q = q8
        q_caller = q8.to(torch.float32) * q_scale  # what the reference computes from (q8, q_scale)
        q_kernel = q_caller  # the kernel converts e4m3 q exactly
        q_scale_arg = torch.tensor([q_scale], dtype=torch.float32, device=device)
    else:
        qd = q32.to(TORCH_DTYPE[case.q_elem])
        if case.strided_q:
            # vLLM: ql_nope written through a transposed bmm output, q_pe a view into [T, H, 192].
            nope_buf = torch.empty(H, T, LATENT, dtype=qd.dtype, device=device)
            nope_buf.copy_(qd[..., :LATENT].transpose(0, 1))
            pe_buf = torch.empty(T, H, 192, dtype=qd.dtype, device=device)
            pe_buf[..., 128:].copy_(qd[..., LATENT:])
            q = (nope_buf.transpose(0, 1), pe_buf[..., 128:])
        else:
            q = qd
        q_caller = qd.to(torch.float32)
        q_kernel = emulate_kernel_q(qd) if case.math == "e4m3" else q_caller
        q_scale_arg = None

    kv_scale_arg = (torch.tensor([case.kv_scale], dtype=torch.float32, device=device)
                    if case.dtype == "fp8" else None)
    seq_lens = torch.tensor(case.seq_lens, dtype=torch.int32, device=device)
    return Inputs(q, kv_cache, table.to(device), seq_lens, kv_scale_arg, q_scale_arg, q_caller, q_kernel)


emulate_kernel_q = emulate_e4m3_q  # the e4m3 opt-in's q, as the kernel rounds it (mla_plugin.reference)


@contextlib.contextmanager
def forced_rows(rows: int | None):
    """MLA_PLUGIN_ROWS_PER_CTA=rows for the duration (dispatch reads it at launch time; its
    plan cache is keyed by the forced value too)."""
    if rows is None:
        yield
        return
    old = os.environ.get(ROWS_ENV)
    os.environ[ROWS_ENV] = str(rows)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ROWS_ENV, None)
        else:
            os.environ[ROWS_ENV] = old


@contextlib.contextmanager
def tuning_override(**keys):
    """The device's tuning table with `keys` replaced (None values ignored) for the duration; the
    plan cache is cleared on entry and exit (tuning is not part of its key)."""
    from mla_plugin import configs, dispatch

    keys = {k: v for k, v in keys.items() if v is not None}
    if not keys:
        yield
        return
    original = configs.tuning_for
    configs.tuning_for = lambda name: {**original(name), **keys}
    dispatch.launch_plan.cache_clear()
    try:
        yield
    finally:
        configs.tuning_for = original
        dispatch.launch_plan.cache_clear()


def op_step(case: Case, inp: Inputs, max_seq_len: int):
    """(step, out, lse): an op call on the case's inputs (query_len 1) writing into fixed bf16
    `out` and `lse` tensors, as a CUDA graph would capture it with a plan for max_seq_len."""
    rows = len(case.seq_lens)
    out = torch.empty(rows, case.heads, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(rows, case.heads, dtype=torch.float32, device="cuda")
    fp8 = dict(fp8_math=case.math) if case.dtype == "fp8" else {}

    def step():
        decode(inp.q, inp.kv_cache, inp.block_table, inp.seq_lens, softmax_scale=SOFTMAX_SCALE,
               kv_scale=inp.kv_scale, query_len=1, out=out, lse=lse, return_lse=True, max_seq_len=max_seq_len,
               **fp8)

    return step, out, lse


def assert_replays_equal_eager(step, out, lse, q, seq_lens, lengths_at, replays: int = 20):
    """Capture `step` (an op call writing `out` / `lse`) in a CUDA graph, then for i < replays set
    the lengths to lengths_at(i), negate q, replay, and check the replay bitwise equal to an eager
    call on the same inputs, without NaN."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for i in range(replays):
        seq_lens.copy_(lengths_at(i))
        for part in (q if isinstance(q, tuple) else (q,)):
            part.mul_(-1)
        graph.replay()
        g_out, g_lse = out.clone(), lse.clone()
        step()
        assert torch.equal(g_out, out), f"replay {i}: output differs from eager"
        assert torch.equal(g_lse, lse), f"replay {i}: lse differs from eager"
        assert not torch.isnan(g_out).any()


def cluster_capable(plan) -> bool:
    """Whether the extension says the plan's variant can merge its splits in a cluster of
    plan.num_splits on the current device (the e4m3 opt-in's 32-row ring cannot)."""
    from mla_plugin import dispatch

    v = plan.variant
    return dispatch.extension().max_active_clusters(v.kv, v.q, v.out, v.mma, v.rows, plan.num_splits,
                                                    plan.smem_bytes,
                                                    torch.cuda.current_device() if torch.cuda.is_available() else 0) > 0


# The CPU dry run (tests/test_gpu_dry_run.py) sets this to tests.fake_cuda.call_as_cuda: the
# op's CUDA branch then runs on fake-CUDA tensors, against an emulated kernel.
ADAPTER = None


def decode(q, kv_cache, block_table, seq_lens, **kwargs):
    """ops.mla_decode, with the launch it made recorded for the coverage check
    (tests/gpu/coverage.py): the plan dispatch chose and the page size."""
    from mla_plugin import ops

    recorder = coverage.recorder()
    before = len(recorder.records)
    if ADAPTER is None:
        result = ops.mla_decode(q, kv_cache, block_table, seq_lens, **kwargs)
    else:
        result = ADAPTER(ops.mla_decode, q, kv_cache, block_table, seq_lens, **kwargs)
    launched = recorder.records[before:]
    rows = (q[0] if isinstance(q, (tuple, list)) else q).shape[0]
    if (kv_cache.device.type == "cuda" or ADAPTER is not None) and rows:
        if len(launched) != 1:
            raise AssertionError(
                f"expected mla_decode to plan exactly one launch, saw {len(launched)}: "
                "tests/gpu/coverage.py wraps dispatch.launch_plan; did dispatch stop calling it?")
        coverage.note_launch(launched[0], block_size=kv_cache.shape[1])
    return result


def run_op(case: Case, inp: Inputs, **kw):
    """The op on the case's inputs: fp8_math resolved and passed for an FP8 cache, an fp16
    `out` (NaN-poisoned) for an fp8 q that writes fp16, the case's rows per CTA forced."""
    if case.dtype == "fp8":
        kw.setdefault("fp8_math", case.math)
    if case.q_elem == "fp8" and case.out_elem == "fp16" and kw.get("out") is None:
        T = case.batch * case.query_len
        kw["out"] = torch.full((T, case.heads, LATENT), float("nan"), dtype=torch.float16,
                               device=inp.kv_cache.device)
    with forced_rows(case.rows):
        return decode(inp.q, inp.kv_cache, inp.block_table, inp.seq_lens,
                      softmax_scale=SOFTMAX_SCALE, kv_scale=inp.kv_scale, q_scale=inp.q_scale,
                      query_len=case.query_len, causal=case.causal, return_lse=True, **kw)


def last_plan():
    """The dispatch LaunchPlan of the last decode() call."""
    return coverage.launches()[-1].plan


def reference_with_stats(case: Case, inp: Inputs, q: str = "kernel"):
    """(ref_out, ref_lse, bounds.Stats) on the data's own device. q="kernel": q as the kernel
    multiplies it (the e4m3 path's quantisation emulated); q="caller": the caller's own q."""
    q_ref = inp.q_kernel if q == "kernel" else inp.q_caller
    with on_device(inp.kv_cache.device):
        return bounds.reference_with_stats(q_ref, inp.kv_cache, inp.block_table, inp.seq_lens,
                                           softmax_scale=SOFTMAX_SCALE, kv_scale=inp.kv_scale,
                                           query_len=case.query_len, causal=case.causal,
                                           arith=case.arith)


def run_reference(case: Case, inp: Inputs, q: str = "kernel"):
    ref_out, ref_lse, _ = reference_with_stats(case, inp, q)
    return ref_out, ref_lse


def measure(case: Case, inp: Inputs, out: torch.Tensor, lse: torch.Tensor, *,
            mean_check: bool = True) -> bounds.Errors:
    """Every check of bounds.check against the reference the case's path is judged by: the
    caller's q for 16-bit caches and the default FP8 path, the emulated e4m3 q for the
    e4m3 path."""
    ref_out, ref_lse, st = reference_with_stats(case, inp)
    with on_device(inp.kv_cache.device):
        return bounds.check(out, lse, ref_out, ref_lse, st, case.arith, mean_check=mean_check)


def mean_abs_error_vs_caller_q(case: Case, inp: Inputs, out: torch.Tensor) -> float:
    """mean |out - ref| over rows that see tokens, ref from the caller's own q (what vLLM
    users get)."""
    ref_out, ref_lse = run_reference(case, inp, q="caller")
    seen = torch.isfinite(ref_lse)
    return float((out.to(torch.float32)[seen] - ref_out[seen]).abs().mean())


def assert_close(case: Case, err: bounds.Errors) -> None:
    problems = err.problems()
    assert not problems, f"{case} ({err.arith}): " + "; ".join(problems)
