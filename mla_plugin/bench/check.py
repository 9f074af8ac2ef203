"""Is a kernel's answer right? Output comparisons with tolerances derived per dtype.

The bench compares before it times: a kernel that disagrees is reported as wrong and
not timed. Two errors are measured on the output [T, H, 512]:
- max abs error, allowed to grow with the output's own size: max|a - b| <= max_abs *
  max(1, max|b|) (this bench's data keeps |out| < 1, where it is the plain absolute
  bound of DESIGN.md's tests);
- mean relative error as mean|a - b| / mean|b|: unlike an element-wise relative error it
  is stable where b is near zero, and an all-zero or garbage output scores about 1.
and one on the LSE [T, H] (natural log): max abs error.
Any NaN or Inf in the output or the LSE fails the comparison.

Tolerances (the bench's data: q, KV ~ N(0, 1), softmax scale 1/sqrt(192)):
- BF16 cache vs the fp32 reference: DESIGN.md's 2e-2 max abs and 1e-2 mean relative
  (bf16 rounding of P and of the output, about 2^-9 relative each, fp32 accumulation).
- FP8 cache vs the fp32 reference on the same dequantised values: our FP8 path may
  multiply in e4m3 (3 mantissa bits: up to 2^-4 relative rounding of q and of P, about
  3.6% rms each), so about 7% mean relative and a logit error that moves the LSE by
  up to a few tenths: 1.5e-1 max abs, 1e-1 mean relative, 3e-1 on the LSE.
- TRITON_MLA dequantises FP8 to BF16 and computes in BF16: it gets the BF16 tolerance
  for both cache dtypes. It stores its LSE in q's dtype (bf16), which adds up to
  2^-8 * |lse| of rounding: allowed whenever one of the two LSEs is bf16.
- Ours vs TRITON_MLA: each is held to its own tolerance against the exact answer, so
  the two may differ by the sum of both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    max_abs: float
    mean_rel: float
    lse_max_abs: float

    def __add__(self, other: "Tolerance") -> "Tolerance":
        return Tolerance(self.max_abs + other.max_abs, self.mean_rel + other.mean_rel,
                         self.lse_max_abs + other.lse_max_abs)


BF16_TOLERANCE = Tolerance(max_abs=2e-2, mean_rel=1e-2, lse_max_abs=1e-2)
FP8_TOLERANCE = Tolerance(max_abs=1.5e-1, mean_rel=1e-1, lse_max_abs=3e-1)


def ours_tolerance(dtype: str) -> Tolerance:
    """Our kernel against the fp32 reference, for a KV cache of `dtype`."""
    return {"bf16": BF16_TOLERANCE, "fp8": FP8_TOLERANCE}[dtype]


def triton_tolerance(dtype: str) -> Tolerance:
    """TRITON_MLA against the fp32 reference: BF16 arithmetic for both cache dtypes."""
    return BF16_TOLERANCE


def cross_tolerance(dtype: str) -> Tolerance:
    """Ours against TRITON_MLA: the sum of the two bounds against the exact answer."""
    return ours_tolerance(dtype) + triton_tolerance(dtype)


@dataclass(frozen=True)
class Comparison:
    against: str  # what the kernel was compared with: "TRITON_MLA" or "reference"
    max_abs: float
    mean_rel: float
    lse_max_abs: float
    finite: bool
    ok: bool
    tolerance: Tolerance

    def describe(self) -> str:
        verdict = "ok" if self.ok else "WRONG"
        finite = "" if self.finite else ", NaN/Inf present"
        tol = self.tolerance
        return (f"{verdict} vs {self.against}: max abs {self.max_abs:.3g} (tol {tol.max_abs:.3g}), "
                f"mean rel {self.mean_rel:.3g} (tol {tol.mean_rel:.3g}), "
                f"lse max abs {self.lse_max_abs:.3g} (tol {tol.lse_max_abs:.3g}){finite}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tolerance"] = asdict(self.tolerance)
        return d


def compare(out: torch.Tensor, lse: torch.Tensor, expected_out: torch.Tensor, expected_lse: torch.Tensor,
            tolerance: Tolerance, against: str) -> Comparison:
    """Compare (out, lse) of a kernel with (expected_out, expected_lse)."""
    if out.shape != expected_out.shape:
        raise ValueError(f"out shape {tuple(out.shape)} differs from the expected {tuple(expected_out.shape)}")
    if lse.shape != expected_lse.shape:
        raise ValueError(f"lse shape {tuple(lse.shape)} differs from the expected {tuple(expected_lse.shape)}")
    a, b = out.float(), expected_out.float()
    la, lb = lse.float(), expected_lse.float()
    finite = bool(torch.isfinite(a).all() and torch.isfinite(la).all()
                  and torch.isfinite(b).all() and torch.isfinite(lb).all())
    diff = (a - b).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(b.abs().mean()) if b.numel() else 0.0
    mean_rel = float(diff.mean()) / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    lse_max_abs = float((la - lb).abs().max()) if la.numel() else 0.0

    lse_allowed = tolerance.lse_max_abs
    if torch.bfloat16 in (lse.dtype, expected_lse.dtype) and lb.numel():
        lse_allowed += float(lb.abs().max()) * 2.0 ** -8  # bf16 storage rounding of one side
    out_allowed = tolerance.max_abs * max(1.0, float(b.abs().max()) if b.numel() else 0.0)
    ok = finite and max_abs <= out_allowed and mean_rel <= tolerance.mean_rel and lse_max_abs <= lse_allowed
    return Comparison(against=against, max_abs=max_abs, mean_rel=mean_rel, lse_max_abs=lse_max_abs,
                      finite=finite, ok=ok, tolerance=tolerance)
