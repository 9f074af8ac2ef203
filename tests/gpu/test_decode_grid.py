"""The kernel against the fp32 reference over the issue's grid, sampled so that every value of
every axis appears on every kernel path: path {bf16, fp16, fp8 default, fp8 e4m3} x heads
{1,16,20,64,128} x block_size {16..128} x seq_len {1,2,63,64,65,1000,4097,32768} x query_len
{1,2,4} x batch {1,3,64}; the FP8 paths cycle q through bf16, fp16 and fp8 (fp16 and bf16 out).
Each case is judged by tests/gpu/bounds.py's derived bounds (max, mean and bias checks).
That the grid covers every value is checked on the CPU (tests/test_gpu_cases.py)."""

from __future__ import annotations

import random

import pytest

from .cases import Case, assert_close, last_plan, make_inputs, measure, run_op

pytestmark = pytest.mark.gpu

HEADS = (1, 16, 20, 64, 128)
BLOCK_SIZES = (16, 32, 64, 128)
SEQ_LENS = (1, 2, 63, 64, 65, 1000, 4097, 32768)
QUERY_LENS = (1, 2, 4)
BATCHES = (1, 3, 64)
CASES_PER_PATH = 24  # = lcm-friendly cover: every value appears at least 3 times
# (cache dtype, fp8_math): every arithmetic the kernel has.
PATHS = (("bf16", None), ("fp16", None), ("fp8", "fp16"), ("fp8", "e4m3"))
# FP8 cases cycle through the query / output dtypes a caller can pass.
FP8_QUERIES = (("bf16", None), ("fp16", None), ("fp8", None), ("fp8", "fp16"))


def _axis(values, n, rng):
    """n entries cycling through values, shuffled: each value appears n // len or more times."""
    seq = [values[i % len(values)] for i in range(n)]
    rng.shuffle(seq)
    return seq


def grid_cases(dtype: str, fp8_math: str | None = None) -> list[Case]:
    rng = random.Random(f"grid-{dtype}" + (f"-{fp8_math}" if fp8_math else ""))
    heads = _axis(HEADS, CASES_PER_PATH, rng)
    blocks = _axis(BLOCK_SIZES, CASES_PER_PATH, rng)
    lens = _axis(SEQ_LENS, CASES_PER_PATH, rng)
    qlens = _axis(QUERY_LENS, CASES_PER_PATH, rng)
    batches = _axis(BATCHES, CASES_PER_PATH, rng)
    cases = []
    for i in range(CASES_PER_PATH):
        seq, batch = lens[i], batches[i]
        qlen = qlens[i] if qlens[i] <= seq else 1  # a request holds at least its new tokens
        if batch == 64 and seq == 32768:
            batch = 3  # 64 x 32k is a benchmark shape, not a unit test; 32k itself still runs
        # Ragged batch: the first request has the grid's length, the others are shorter.
        seq_lens = [seq] + [rng.randint(qlen, seq) for _ in range(batch - 1)]
        q_dtype, out_dtype = FP8_QUERIES[i % len(FP8_QUERIES)] if dtype == "fp8" else (None, None)
        cases.append(Case(dtype=dtype, heads=heads[i], block_size=blocks[i], seq_lens=seq_lens,
                          query_len=qlen, causal=(i % 4 != 3),
                          kv_scale=0.5 if dtype == "fp8" and i % 2 else 1.0, q_dtype=q_dtype,
                          out_dtype=out_dtype, fp8_math=fp8_math, seed=i))
    return cases


ALL = [c for dtype, fp8_math in PATHS for c in grid_cases(dtype, fp8_math)]
# The grid's cases of at most this many (query row x token) pairs also run in the mutation
# check (scripts/mutation_check.sh, marker mutation_check): every path, most shapes, seconds.
MUTATION_CHECK_MAX_WORK = 200_000


def work(case: Case) -> int:
    return case.heads * case.query_len * sum(case.seq_lens)


def _param(case: Case):
    marks = [pytest.mark.mutation_check] if work(case) <= MUTATION_CHECK_MAX_WORK else []
    return pytest.param(case, marks=marks, id=str(case))


@pytest.mark.parametrize("case", [_param(c) for c in ALL])
def test_decode_matches_reference(case, error_log):
    inp = make_inputs(case)
    out, lse = run_op(case, inp)
    v = last_plan().variant
    assert (v.kv, v.q, v.out, v.mma) == case.variant_dtypes(), f"{case}: launched {v}"
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
