"""The GPU suite's error bounds (tests/gpu/bounds.py), proven on the CPU against an emulated
kernel (tests/gpu/emulate.py) that rounds exactly as the kernel's contract says: the checks
pass the honest emulation of every path and fail the same arithmetic made twice as noisy
(P rounded with one bit fewer), P truncated by a bit (MLA_MUTATE_P_DROP_BITS=1) and an output
scaled by 1 + 2^-9 (MLA_MUTATE_OUT_SCALE_ULPS=1). This is the evidence that the bounds are
tight enough to catch a kernel twice as wrong, without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from tests.gpu import bounds, cases, emulate

FP8 = torch.float8_e4m3fn


def log_uniform(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.exp2(-12 * torch.rand(n, generator=gen, dtype=torch.float64)).to(torch.float32)


# ---- the constants and helpers -----------------------------------------------------------

@pytest.mark.parametrize("elem", ["bf16", "fp16", "fp8"])
def test_kappa_is_the_mean_squared_relative_rounding_error_of_log_uniform_numbers(elem):
    # KAPPA u^2 = E[((rn(x) - x) / x)^2] for log-uniform x, whatever the precision.
    x = log_uniform(400_000)
    rounded = emulate.round_p(x, elem)
    if elem == "fp8":
        x = x[x * 256 >= 2 ** -6]  # e4m3's normal range (subnormals have their own term)
        rounded = emulate.round_p(x, elem)
    kappa = float((((rounded - x) / x) ** 2).mean()) / bounds.UNIT[elem] ** 2
    assert kappa == pytest.approx(bounds.KAPPA, rel=0.03)


@pytest.mark.parametrize("elem", ["bf16", "fp16", "fp8"])
def test_round_to_nearest_errs_at_most_u(elem):
    x = log_uniform(100_000, seed=1)
    if elem == "fp8":
        x = x[x * 256 >= 2 ** -6]
    rel = ((emulate.round_p(x, elem) - x) / x).abs()
    assert float(rel.max()) <= bounds.UNIT[elem]


@pytest.mark.parametrize("elem", ["bf16", "fp16"])
def test_ulp_is_the_spacing_to_the_next_number(elem):
    dtype = cases.TORCH_DTYPE[elem]
    y = log_uniform(10_000, seed=4).to(dtype)
    nxt = (y.view(torch.int16) + 1).view(dtype)  # positive numbers: the next bit pattern
    assert torch.equal(bounds.ulp(y.to(torch.float32), elem), nxt.to(torch.float32) - y.to(torch.float32))
    tiny = torch.tensor([0.0, 2.0 ** -140, 2.0 ** -20]).to(dtype)  # zero and subnormals
    nxt = (tiny.view(torch.int16) + 1).view(dtype)
    assert torch.equal(bounds.ulp(tiny.to(torch.float32), elem), nxt.to(torch.float32) - tiny.to(torch.float32))


@pytest.mark.parametrize("elem,bits", [("bf16", 8), ("fp16", 11)])
def test_round_significant_is_the_dtype_rounding_at_its_own_width(elem, bits):
    # So p_fewer_bits=1 is the same round-to-nearest-even with one bit fewer: twice the error.
    x = log_uniform(100_000, seed=2)
    assert torch.equal(emulate.round_significant(x, bits), x.to(cases.TORCH_DTYPE[elem]).to(torch.float32))
    fewer = emulate.round_p(x, elem, p_fewer_bits=1)
    ratio = ((fewer - x) / x).abs().max() / ((emulate.round_p(x, elem) - x) / x).abs().max()
    assert 1.9 < float(ratio) <= 2.0


def test_p_drop_bits_clears_the_lowest_mantissa_bits_after_rounding():
    x = torch.tensor([1 + 2 ** -7, 1 + 2 ** -6 + 2 ** -7, 0.75])
    assert torch.equal(emulate.round_p(x, "bf16", p_drop_bits=1), torch.tensor([1.0, 1 + 2 ** -6, 0.75]))
    y = torch.tensor([1 + 2 ** -10 + 2 ** -9])
    assert torch.equal(emulate.round_p(y, "fp16", p_drop_bits=2), torch.tensor([1.0]))
    assert torch.equal(emulate.round_p(x, "fp8", p_drop_bits=1), emulate.round_p(x, "fp8"))  # 16-bit P only


def test_arith_of_every_path():
    assert bounds.arith_for("bf16", "bf16") == bounds.Arith("bf16", "bf16")
    assert bounds.arith_for("fp16", "fp16") == bounds.Arith("fp16", "fp16")
    assert bounds.arith_for("fp8", "bf16") == bounds.Arith("fp16", "bf16")  # default: fp16 P
    assert bounds.arith_for("fp8", "fp16", "fp16") == bounds.Arith("fp16", "fp16")
    assert bounds.arith_for("fp8", "bf16", "e4m3") == bounds.Arith("fp8", "bf16")
    with pytest.raises(ValueError):
        bounds.arith_for("fp8", "bf16", "int8")


# ---- the checks against the emulated kernel ------------------------------------------------

PATHS = {
    "bf16": dict(dtype="bf16"),
    "fp16": dict(dtype="fp16"),
    "fp8 default, bf16 q": dict(dtype="fp8", kv_scale=0.5, fp8_math="fp16"),
    "fp8 default, fp8 q, fp16 out": dict(dtype="fp8", kv_scale=0.5, fp8_math="fp16", q_dtype="fp8",
                                         out_dtype="fp16"),
    "fp8 e4m3, bf16 q": dict(dtype="fp8", kv_scale=0.5, fp8_math="e4m3"),
    "fp8 e4m3, fp16 q": dict(dtype="fp8", kv_scale=0.5, fp8_math="e4m3", q_dtype="fp16"),
}


def _emulated(case: cases.Case, inp: cases.Inputs, **mutation):
    return emulate.emulated_decode(inp.q_kernel, inp.kv_cache, inp.block_table, inp.seq_lens,
                                   softmax_scale=cases.SOFTMAX_SCALE, kv_scale=inp.kv_scale,
                                   query_len=case.query_len, causal=case.causal, arith=case.arith,
                                   tile=64 if case.dtype == "fp8" else 32, **mutation)


@pytest.fixture(scope="module")
def judged():
    """{path: (case, inputs, reference, stats)} of a mid-size ragged case per path."""
    out = {}
    for name, kw in PATHS.items():
        case = cases.Case(heads=16, block_size=32, seq_lens=[1000, 300, 77, 0], query_len=2, seed=3, **kw)
        inp = cases.make_inputs(case, device="cpu")
        out[name] = (case, inp, *cases.reference_with_stats(case, inp))
    return out


def _check(judged, name, **mutation) -> bounds.Errors:
    case, inp, ref_out, ref_lse, st = judged[name]
    out, lse = _emulated(case, inp, **mutation)
    return bounds.check(out, lse, ref_out, ref_lse, st, case.arith)


@pytest.mark.parametrize("name", PATHS)
def test_honest_emulation_passes_every_check_with_the_predicted_mean_error(judged, name):
    err = _check(judged, name)
    assert not err.problems(), err.problems()
    assert 0.75 <= err.rho <= 1.15, f"measured / predicted mean error {err.rho:.3f}: the model is off"
    assert err.rho_limit < 1.7 and err.max_ratio < 1.0


@pytest.mark.parametrize("name", PATHS)
def test_twice_the_rounding_error_fails_the_mean_check(judged, name):
    # P rounded to nearest with one bit fewer: exactly twice P's rounding error, no bias.
    honest = _check(judged, name)
    twice = _check(judged, name, p_fewer_bits=1)
    assert 1.7 <= twice.rho / honest.rho <= 2.3, (honest.rho, twice.rho)
    assert twice.rho > twice.rho_limit, f"rho {twice.rho:.3f} <= limit {twice.rho_limit:.3f}"


@pytest.mark.parametrize("name", [n for n in PATHS if "e4m3" not in n])
def test_the_kernels_mutation_hooks_fail_the_checks(judged, name):
    # What scripts/mutation_check.sh builds into the real kernel, applied to the emulation.
    dropped = _check(judged, name, p_drop_bits=1)  # MLA_MUTATE_P_DROP_BITS=1
    assert dropped.problems() and dropped.rho > dropped.rho_limit and dropped.bias < -dropped.bias_limit
    scaled = _check(judged, name, out_scale_ulps=1)  # MLA_MUTATE_OUT_SCALE_ULPS=1
    assert scaled.problems() and scaled.bias > scaled.bias_limit


@pytest.mark.parametrize("name", [n for n in PATHS if "e4m3" in n])
def test_the_16bit_p_mutation_leaves_e4m3_p_alone(judged, name):
    assert not _check(judged, name, p_drop_bits=1).problems()


@pytest.mark.parametrize("name", ["bf16", "fp8 default, bf16 q"])
def test_a_local_fault_fails_the_max_check(judged, name):
    case, inp, ref_out, ref_lse, st = judged[name]
    out, lse = _emulated(case, inp)
    wrong = out.clone()
    wrong[5, 3] = out[5, 4]  # one head's row from its neighbour
    err = bounds.check(wrong, lse, ref_out, ref_lse, st, case.arith)
    assert err.max_ratio > 1 and "row 5 head 3" in err.worst
    zeros = bounds.check(torch.zeros_like(out), lse, ref_out, ref_lse, st, case.arith)
    assert zeros.max_ratio > 10 and zeros.rho > 10


def test_rows_that_see_nothing_must_be_zero_and_minus_inf(judged):
    case, inp, ref_out, ref_lse, st = judged["bf16"]
    out, lse = _emulated(case, inp)
    assert not bounds.check(out, lse, ref_out, ref_lse, st, case.arith).problems()
    empty = 6  # request 3 (seq_len 0), row 0
    assert torch.isinf(ref_lse[empty]).all()
    bad = out.clone()
    bad[empty, 0, 0] = 1e-3
    assert "a row that sees no token is not zeros / -inf" in bounds.check(bad, lse, ref_out, ref_lse, st, case.arith).problems()
    nan = out.clone()
    nan[0, 0, 0] = float("nan")
    assert "1 NaN" in bounds.check(nan, lse, ref_out, ref_lse, st, case.arith).problems()


def test_lse_bound(judged):
    case, inp, ref_out, ref_lse, st = judged["fp16"]
    out, lse = _emulated(case, inp)
    err = bounds.check(out, lse, ref_out, ref_lse, st, case.arith)
    assert err.lse_ratio < 0.1  # fp32 sums on the CPU: far inside 2^-14 + 2^-17 |lse|
    shifted = torch.where(torch.isfinite(lse), lse + 1e-3, lse)
    assert any("lse error" in p for p in bounds.check(out, shifted, ref_out, ref_lse, st, case.arith).problems())


def test_mean_check_needs_enough_independent_draws():
    case = cases.Case(dtype="bf16", heads=1, block_size=16, seq_lens=[5])
    inp = cases.make_inputs(case, device="cpu")
    out, lse = _emulated(case, inp)
    err = bounds.check(out, lse, *cases.reference_with_stats(case, inp), case.arith)
    assert math.isnan(err.rho) and "mean and bias checks skipped" in err.notes[0]
    assert not err.problems()


def test_bounds_scale_with_the_data(judged):
    # V (= K's latent) 8x and q / 8 (powers of two: exact, the same scores and softmax): every
    # bound 8x.
    case, inp, ref_out, ref_lse, st = judged["bf16"]
    big = cases.Inputs(inp.q, (inp.kv_cache.float() * 8).to(torch.bfloat16), inp.block_table, inp.seq_lens,
                       None, None, inp.q_caller / 8, inp.q_kernel / 8)
    ref8, lse8, st8 = cases.reference_with_stats(case, big)
    seen = torch.isfinite(ref_lse)
    torch.testing.assert_close(ref8, 8 * ref_out, rtol=1e-5, atol=1e-6)
    b1 = bounds.model(ref_out[seen], bounds._select_stats(st, seen), case.arith).bound
    b8 = bounds.model(ref8[seen], bounds._select_stats(st8, seen), case.arith).bound
    torch.testing.assert_close(b8, 8 * b1, rtol=1e-3, atol=0)
