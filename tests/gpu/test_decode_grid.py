"""The kernel against the fp32 reference over the issue's grid, sampled so that every value of
every axis appears with every dtype: dtype x heads {1,16,20,64,128} x block_size {16..128} x
seq_len {1,2,63,64,65,1000,4097,32768} x query_len {1,2,4} x batch {1,3,64}."""

from __future__ import annotations

import random

import pytest

from .cases import Case, assert_close, make_inputs, measure, run_op

pytestmark = pytest.mark.gpu

HEADS = (1, 16, 20, 64, 128)
BLOCK_SIZES = (16, 32, 64, 128)
SEQ_LENS = (1, 2, 63, 64, 65, 1000, 4097, 32768)
QUERY_LENS = (1, 2, 4)
BATCHES = (1, 3, 64)
CASES_PER_DTYPE = 24  # = lcm-friendly cover: every value appears at least 3 times


def _axis(values, n, rng):
    """n entries cycling through values, shuffled: each value appears n // len or more times."""
    seq = [values[i % len(values)] for i in range(n)]
    rng.shuffle(seq)
    return seq


def grid_cases(dtype: str) -> list[Case]:
    rng = random.Random(f"grid-{dtype}")
    heads = _axis(HEADS, CASES_PER_DTYPE, rng)
    blocks = _axis(BLOCK_SIZES, CASES_PER_DTYPE, rng)
    lens = _axis(SEQ_LENS, CASES_PER_DTYPE, rng)
    qlens = _axis(QUERY_LENS, CASES_PER_DTYPE, rng)
    batches = _axis(BATCHES, CASES_PER_DTYPE, rng)
    cases = []
    for i in range(CASES_PER_DTYPE):
        seq, batch = lens[i], batches[i]
        qlen = qlens[i] if qlens[i] <= seq else 1  # a request holds at least its new tokens
        if batch == 64 and seq == 32768:
            batch = 3  # 64 x 32k is a benchmark shape, not a unit test; 32k itself still runs
        # Ragged batch: the first request has the grid's length, the others are shorter.
        seq_lens = [seq] + [rng.randint(qlen, seq) for _ in range(batch - 1)]
        cases.append(Case(dtype=dtype, heads=heads[i], block_size=blocks[i], seq_lens=seq_lens,
                          query_len=qlen, causal=(i % 4 != 3),
                          kv_scale=0.5 if dtype == "fp8" and i % 2 else 1.0, seed=i))
    return cases


ALL = [c for d in ("bf16", "fp8") for c in grid_cases(d)]


def test_grid_covers_every_value_with_every_dtype():
    for dtype in ("bf16", "fp8"):
        cases = [c for c in ALL if c.dtype == dtype]
        assert {c.heads for c in cases} == set(HEADS)
        assert {c.block_size for c in cases} == set(BLOCK_SIZES)
        assert {c.seq_lens[0] for c in cases} == set(SEQ_LENS)
        assert {c.query_len for c in cases} == set(QUERY_LENS)
        assert {c.batch for c in cases} == set(BATCHES)


@pytest.mark.parametrize("case", ALL, ids=str)
def test_decode_matches_reference(case, error_log):
    inp = make_inputs(case)
    out, lse = run_op(case, inp)
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
