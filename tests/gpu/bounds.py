"""The error model of the decode kernel's arithmetic and the checks derived from it.

Plain torch, no pytest and no GPU needed: tests/test_gpu_bounds.py runs every function here on
CPU tensors, against an emulated kernel (tests/gpu/emulate.py) that performs exactly the
roundings described below, and shows that the checks pass the honest emulation and fail one
with twice the error. The GPU tests (tests/gpu/) apply the same checks to the real kernel.

What the kernel rounds (the contract of the kernel rewrite, per path):

  16-bit cache (bf16, fp16)   q, K, V in the cache dtype (exact inputs); S = q.k in fp32
                              (products exact, fp32 accumulation); softmax in fp32 (exp2);
                              P rounded to the cache dtype before P.V; numerator from the
                              rounded P, denominator from the unrounded fp32 p; output rounded
                              to bf16 / fp16. Split-KV partials in fp32, merged by LSE weights.
  FP8 cache, fp8_math "fp16"  K, V converted from e4m3 to fp16 exactly; q exact (bf16 q after an
  (the default)               exact power-of-two row scale, fp16 q as is, fp8 q exactly); P
                              rounded to fp16: the same as a 16-bit cache with P in fp16.
                              The reference is the caller's own q on the dequantised cache.
  FP8 cache, fp8_math "e4m3"  q quantised per row to e4m3 (emulated exactly in the reference:
  (opt-in)                    cases.emulate_kernel_q); P stored as e4m3 of 256 p; e4m3 MMAs.

Per output element (row r, head h, channel c) let pi_t be the reference's softmax weights
(sum_t pi_t = 1), v_t the dequantised values and ref = sum_t pi_t v_t. The kernel's p_t are the
pi_t times a factor per tile (exp(lse - running max)), and its P~_t = p_t (1 + d_t) with
|d_t| <= u_p = 2^-p (p: significant bits of P's element: bf16 8, fp16 11, e4m3 4; round to
nearest errs by at most half an ulp, and half an ulp is at most 2^-p of the value). Since the
denominator uses the unrounded p, the factor cancels and the pre-rounding output error is

    e = sum_t pi_t d_t v_t   (+ score, accumulation and subnormal terms below)

 - Its size: the d_t are independent across tokens (each p_t's own rounding), zero-mean (round
   to nearest even), with E d^2 = kappa u_p^2, where kappa = E[(ulp/x)^2] / (12 u_p^2): ulp/x
   lies in (u_p, 2 u_p] for any x, so kappa is in [1/12, 1/3] whatever the mantissas of the p
   are, and KAPPA = 0.1803 when they are spread like log-uniform (Benford) numbers, which is
   what exp of continuous scores gives (the emulation measures it: tests/test_gpu_bounds.py).
   So  sigma_P = sqrt(kappa) u_p A  with  A = sqrt(sum_t pi_t^2 v_t^2).
 - Max check (per element):  |out - ref| <= C_MAX (u_p A + ...) + u_out (|ref| + ...)
   with C_MAX = 4: e is a sum of independent terms each bounded by b_t = u_p pi_t |v_t|, and
   sqrt(sum b_t^2) = u_p A. With k tokens of weight, |e| <= sum b_t <= sqrt(k) u_p A
   (Cauchy-Schwarz), so C_MAX = 4 is a hard bound up to 16 tokens; with many tokens e is
   near-normal with variance <= u_p^2 A^2 / 3 (kappa <= 1/3), so 4 u_p A is >= 6.9 sigma: a
   two-sided tail of 5e-12 per element, under 1e-4 over the 2e7 elements of the largest grid
   case. Output rounding adds at most u_out |x| (x = the pre-rounding value), u_out = 2^-8 for
   a bf16 output, 2^-11 for fp16.
   The max check catches local faults (a wrong token, channel or tile); it has to leave room
   for the largest of millions of errors, so a uniformly 2x worse kernel can still pass it.
   That is the job of the mean check:
 - Mean check (per case): compare against the reference ROUNDED to the output dtype. For a
   reference whose position inside its output ulp is uniform (random data),
   E|rn(ref + e) - rn(ref)| = E|e| exactly (the expected number of rounding boundaries in an
   interval of length |e| is |e| / ulp), so the output's own rounding cancels in expectation
   and D = sum_i |out_i - rn(ref_i)| measures the arithmetic error before the output rounding,
   even where that is 8x smaller than a bf16 output ulp (FP8 cache, fp16 P, bf16 out).
   Predicted: M = sum_i (sqrt(2/pi) sigma_i + beta_i) (E|N(0, s^2)| = sqrt(2/pi) s; a sum of
   few uniform terms gives at most 0.866 s, 9% more, and then P's largest term is exact:
   p = exp(0) = 1 for the row's maximum, so the model overstates those rows).
   rho = D / M is about 1 for an honest kernel (at most sqrt((1/3) / KAPPA) = 1.36 for the worst
   mantissa spread) and about 2 for a kernel with twice P's error. Assert
   rho <= RHO_MAX + Z_MEAN * noise, RHO_MAX = sqrt(2) (the geometric middle of 1 and 2), noise
   the statistical spread of rho estimated from the case itself (see mean_noise), Z_MEAN = 4.
 - The row's largest weight is exact: the kernel's p for the token holding the running maximum
   is exp2(0) = 1 (or 1 + 2^-24 from an fma), which rounds to 1, so the mean model leaves that
   token out of A (A_x); the max check keeps it. (A kernel that rescales lazily, FA3-style,
   would round that p too: its honest rho would then read up to about 1.5x higher.)
 - Bias check (per case): the slope beta^ = sum (out - rn(ref)) ref / sum ref^2. Round to
   nearest has no bias, so an honest kernel has beta^ = 0 up to noise and the accumulation bias
   below; a scaled output (out (1 + 2^-9)) or truncated P (about -0.72 u_p) shows at once.
 - Score errors: S in fp32 with exact products, 36 k-steps of 16 channels, each adding at most
   2^-23 of a partial sum (tensor cores may truncate), partials about the score's own spread:
   eps_S = 2^-18 (1 + s_rms) absolute in natural-log units (s_rms: the row's RMS score), which
   also covers ex2.approx (relative 2^-22 on p). To first order
   e_S = sum_t pi_t ds_t (v_t - ref): sigma_S = eps_S A_S, A_S = sqrt(sum pi_t^2 (v_t - ref)^2).
 - Accumulation: P.V in fp32 over n tokens in ceil(n / 16) MMA k-steps; truncating tensor cores
   lose up to 2^-23 of the running sum per step, in one direction:
   beta = 2^-24 ceil(n / 16) (|ref| + 2 A) (mean bias; twice that in the max check). With
   split-KV the steps per split are fewer: this counts them all, an upper bound.
 - Subnormal P (fp16 P below 2^-14: absolute error <= 2^-25; e4m3 P = e4m3(256 p) below 2^-6,
   i.e. p < 2^-14: absolute error <= 2^-18 in p). Kernel p_t >= pi_t / pi_max (its running
   max is at most the row's), so only tokens with pi_t < 2^-14 pi_max can be subnormal, and an
   absolute error h in p is at most h pi_max in pi units:
   sigma_sub = h pi_max sqrt(sum_{sub t} v_t^2 / 3), bound term h pi_max sqrt(sum_{sub t} v_t^2).
 - LSE: from the unrounded fp32 p: |lse - ref| <= 2^-14 + 2^-17 |ref| (fp32 sums of up to 32k
   terms, exp2 / lg2 approximations and the score error eps_S, with room to spare).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

LATENT = 512

C_MAX = 4.0
KAPPA = 0.1803  # E[(ulp/x)^2] / (12 u^2) for log-uniform x: (4 / (2 ln 2)) (1 - 1/4) / 12
RHO_MAX = math.sqrt(2.0)
Z_MEAN = 4.0
Z_BIAS = 5.0
GAUSS_MEAN_ABS = math.sqrt(2.0 / math.pi)
ROW_NOISE = 0.5  # relative spread of one row's mean |e| from n2 effective tokens: 0.5 / sqrt(n2)
EPS_S_REL = 2.0 ** -18
BETA_STEP = 2.0 ** -24  # mean truncation loss per MMA k-step, relative to the running sum
MMA_K_TOKENS = 16
BIAS_FLOOR = 2.0 ** -18  # fp32 reference, rcp/ex2 approximations: relative, far below 2^-11
LSE_ABS = 2.0 ** -14
LSE_REL = 2.0 ** -17
# A mean check needs enough independent draws to be meaningful: below this many expected
# rounding-boundary crossings (or effective tokens over all rows) only the max check runs.
MEAN_MIN_COUNT = 100.0

UNIT = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11, "fp8": 2.0 ** -4}  # 2^-(significant bits)
OUT_TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16}
MIN_SPACING = {"bf16": 2.0 ** -133, "fp16": 2.0 ** -24}  # between subnormal outputs
# Below SUB_THRESHOLD (in the kernel's p units, p <= 1) P is subnormal, with absolute error
# at most SUB_ABS: fp16 min normal 2^-14, spacing 2^-24; e4m3 of 256 p: min normal 2^-6,
# spacing 2^-9, so p < 2^-14 and 2^-10 / 256. bf16 has fp32's range: none.
SUB_THRESHOLD = {"bf16": 0.0, "fp16": 2.0 ** -14, "fp8": 2.0 ** -14}
SUB_ABS = {"bf16": 0.0, "fp16": 2.0 ** -25, "fp8": 2.0 ** -18}


@dataclass(frozen=True)
class Arith:
    """The roundings of one kernel path: P's element and the output's."""

    p_elem: str  # "bf16" | "fp16" | "fp8"
    out_elem: str  # "bf16" | "fp16"

    @property
    def u_p(self) -> float:
        return UNIT[self.p_elem]

    @property
    def u_out(self) -> float:
        return UNIT[self.out_elem]

    def __str__(self) -> str:
        return f"P {self.p_elem}, out {self.out_elem}"


def arith_for(kv: str, out: str, fp8_math: str | None = None) -> Arith:
    """kv: the cache element ("bf16" | "fp16" | "fp8"), out: the output element; fp8_math for an
    FP8 cache ("fp16" default, "e4m3" opt-in)."""
    if kv in ("bf16", "fp16"):
        return Arith(kv, out)
    if kv != "fp8":
        raise ValueError(f"unknown cache element {kv!r}")
    math_ = fp8_math or "fp16"
    if math_ not in ("fp16", "e4m3"):
        raise ValueError(f"unknown fp8_math {math_!r}")
    return Arith("fp16" if math_ == "fp16" else "fp8", out)


@dataclass
class Stats:
    """Per-element and per-row facts of the reference's softmax, from its probe."""

    A2: torch.Tensor  # [T, H, 512] sum_t pi^2 v^2
    A2x: torch.Tensor  # [T, H, 512] the same without the row's largest weight
    AS2: torch.Tensor  # [T, H, 512] sum_t pi^2 (v - ref)^2
    SUB2: torch.Tensor  # [T, H, 512] sum over possibly subnormal tokens of v^2
    pi_max: torch.Tensor  # [T, H]
    s_rms: torch.Tensor  # [T, H] RMS of the row's visible scores
    n_tokens: torch.Tensor  # [T, H] tokens the row sees
    BW: torch.Tensor  # [T, H] sum_t pi^2 (v_t . ref)^2 without the largest weight
    n2: torch.Tensor  # [T, H] (sum pi^2)^2 / sum pi^4 without the largest: effective tokens of the P error


def reference_with_stats(q, kv_cache, block_table, seq_lens, *, softmax_scale, kv_scale=None,
                         q_scale=None, query_len=1, causal=True, arith: Arith):
    """(ref_out, ref_lse, Stats): mla_decode_reference plus what the error model needs."""
    from mla_plugin.reference import _reference

    probe = _StatsProbe(arith)
    ref_out, ref_lse = _reference(q, kv_cache, block_table, seq_lens, softmax_scale=softmax_scale,
                                  kv_scale=kv_scale, q_scale=q_scale, query_len=query_len,
                                  causal=causal, probe=probe)
    return ref_out, ref_lse, probe.stats(ref_out.shape, ref_out.device, query_len)


class _StatsProbe:
    def __init__(self, arith: Arith):
        self.arith = arith
        self.parts: list[tuple[slice, dict]] = []

    def __call__(self, rows, scores, probs, values, out):
        b, Q, H, L = probs.shape
        P = probs.reshape(b, Q * H, L)
        P2 = P * P
        V2 = values * values
        o = out.reshape(b, Q * H, LATENT)
        A2 = torch.bmm(P2, V2)
        # The row's largest weight is exact in the kernel (p = exp2(0) = 1, rounded: 1): the
        # mean model leaves it out (the max check keeps it, see the module docstring).
        P2x = P2.scatter(-1, P.argmax(-1, keepdim=True), 0.0)
        A2x = torch.bmm(P2x, V2)
        PV = torch.bmm(P2, values)
        S2 = P2.sum(-1, keepdim=True)
        AS2 = (A2 - 2 * o * PV + o * o * S2).clamp_min(0)
        pi_max = P.amax(-1)
        visible = torch.isfinite(scores).reshape(b, Q * H, L)
        n_tokens = visible.sum(-1)
        s = torch.where(visible, scores.reshape(b, Q * H, L), 0.0)
        s_rms = torch.sqrt((s * s).sum(-1) / n_tokens.clamp_min(1))
        threshold = SUB_THRESHOLD[self.arith.p_elem]
        if threshold:
            sub = (visible & (P < threshold * pi_max[..., None])).to(P.dtype)
            SUB2 = torch.bmm(sub, V2)
        else:
            SUB2 = torch.zeros_like(A2)
        # w_t = v_t . ref: how token t's rounding moves sum_c e_c ref_c (the bias statistic).
        w = torch.bmm(o, values.transpose(1, 2))
        BW = (P2x * w * w).sum(-1)
        S2x = P2x.sum(-1)
        S4x = (P2x * P2x).sum(-1)
        n2 = torch.where(S4x > 0, S2x ** 2 / S4x.clamp_min(1e-38), 0.0)
        part = dict(A2=A2, A2x=A2x, BW=BW, AS2=AS2, SUB2=SUB2, pi_max=pi_max, s_rms=s_rms, n_tokens=n_tokens, n2=n2)
        self.parts.append((rows, {k: v.reshape(b * Q, H, *v.shape[2:]) for k, v in part.items()}))

    def stats(self, shape, device, query_len) -> Stats:
        T, H, _ = shape
        full = dict(A2=torch.zeros(T, H, LATENT, device=device),
                    A2x=torch.zeros(T, H, LATENT, device=device),
                    AS2=torch.zeros(T, H, LATENT, device=device),
                    SUB2=torch.zeros(T, H, LATENT, device=device),
                    BW=torch.zeros(T, H, device=device),
                    pi_max=torch.zeros(T, H, device=device), s_rms=torch.zeros(T, H, device=device),
                    n_tokens=torch.zeros(T, H, device=device, dtype=torch.long),
                    n2=torch.zeros(T, H, device=device))
        for rows, part in self.parts:
            r = slice(rows.start * query_len, rows.stop * query_len)
            for k, v in part.items():
                full[k][r] = v.to(full[k].dtype)
        return Stats(**full)


@dataclass
class Model:
    """The per-element prediction of one case."""

    bound: torch.Tensor  # [T, H, 512] max |out - ref|
    sigma: torch.Tensor  # [T, H, 512] RMS of the random pre-rounding error
    beta: torch.Tensor  # [T, H, 512] systematic (accumulation) error, mean
    mean_abs: torch.Tensor  # [T, H, 512] predicted E|pre-rounding error|


def model(ref: torch.Tensor, st: Stats, arith: Arith) -> Model:
    u_p, u_out = arith.u_p, arith.u_out
    A = st.A2.sqrt()
    eps_s = (EPS_S_REL * (1.0 + st.s_rms))[..., None]
    score = eps_s * st.AS2.sqrt()
    sub = (SUB_ABS[arith.p_elem] * st.pi_max)[..., None] * st.SUB2.sqrt()
    steps = torch.ceil(st.n_tokens.to(torch.float32) / MMA_K_TOKENS)[..., None]
    beta = BETA_STEP * steps * (ref.abs() + 2 * A)
    sigma = torch.sqrt(KAPPA * u_p ** 2 * st.A2x + score ** 2 + sub ** 2 / 3)
    pre = C_MAX * (u_p * A + score + sub) + 2 * beta
    # output rounding: u_out of the pre-rounding value, half a subnormal step below the normals
    bound = pre + u_out * (ref.abs() + pre) + MIN_SPACING[arith.out_elem] / 2
    return Model(bound=bound, sigma=sigma, beta=beta, mean_abs=GAUSS_MEAN_ABS * sigma + beta)


def ulp(x: torch.Tensor, elem: str) -> torch.Tensor:
    """The spacing of `elem` numbers at |x|: 2 u 2^floor(log2 |x|), and the fixed subnormal
    spacing below the normal range."""
    _, e = torch.frexp(x.abs())  # |x| = m 2^e, m in [0.5, 1)
    spacing = torch.ldexp(torch.full_like(x, 2.0 * UNIT[elem]), e - 1).clamp_min(MIN_SPACING[elem])
    return torch.where(x == 0, torch.full_like(x, MIN_SPACING[elem]), spacing)


def mean_noise(ref, m: Model, st: Stats, arith: Arith) -> tuple[float, float]:
    """(relative spread of rho, count of independent draws behind it).

    Two sources: whether each element's error crosses a rounding boundary of the output
    (Var D_i <= ulp_i E|e_i| + sigma_i^2), and the d_t shared by the 512 channels of a row (a
    row's mean |e| spreads by ROW_NOISE / sqrt(n2) with n2 its effective tokens)."""
    M = float(m.mean_abs.sum())
    if M <= 0:
        return math.inf, 0.0
    u = ulp(ref, arith.out_elem)
    var_cross = float((u * m.mean_abs + m.sigma ** 2).sum())
    row_m = m.mean_abs.sum(-1)
    n2 = st.n2.clamp_min(1.0)
    var_row = float(((ROW_NOISE * row_m) ** 2 / n2).sum())
    noise = math.sqrt(var_cross + var_row) / M
    crossings = float((m.mean_abs / u.clamp_min(1e-38)).sum())
    draws = min(crossings, float(st.n2.sum()))
    return noise, draws


@dataclass
class Errors:
    max_abs: float
    mean_abs: float
    mean_rel: float  # mean |out - ref| / mean |ref|
    lse_max_abs: float
    nan_count: int
    max_ratio: float  # max_i |out - ref| / bound_i  (<= 1)
    worst: str  # where max_ratio is
    bound: float  # the bound at the worst element
    rho: float  # measured / predicted mean error (NaN when the mean check does not apply)
    rho_limit: float
    bias: float  # slope of (out - rn(ref)) on ref
    bias_limit: float
    rho_noise: float  # the estimated spread of rho (rho_limit = RHO_MAX + Z_MEAN rho_noise)
    bias_noise: float
    lse_ratio: float  # max |lse - ref| / lse bound
    empty_rows_ok: bool
    arith: str = ""
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        if self.nan_count:
            found.append(f"{self.nan_count} NaN")
        if not self.empty_rows_ok:
            found.append("a row that sees no token is not zeros / -inf")
        if not self.max_ratio <= 1.0:
            found.append(f"max error {self.max_abs:.3g}: {self.max_ratio:.3g} x its bound at {self.worst}")
        if not self.rho <= self.rho_limit and not math.isnan(self.rho):
            found.append(f"mean error {self.rho:.3g} x the predicted, limit {self.rho_limit:.3g}")
        if not abs(self.bias) <= self.bias_limit:
            found.append(f"bias {self.bias:.3g} (relative slope on ref), limit {self.bias_limit:.3g}")
        if not self.lse_ratio <= 1.0:
            found.append(f"lse error {self.lse_max_abs:.3g}: {self.lse_ratio:.3g} x its bound")
        return found


def check(out, lse, ref_out, ref_lse, st: Stats, arith: Arith, *, mean_check: bool = True) -> Errors:
    """Every check of one case. mean_check=False for hand-built data whose reference values are
    not spread inside their ulps (the mean and bias statistics assume random data)."""
    out32 = out.to(torch.float32)
    seen = torch.isfinite(ref_lse)  # [T, H]: rows that see at least one token
    nan_count = int(torch.isnan(out32).sum()) + int(torch.isnan(lse).sum())
    empty_ok = bool(torch.all(lse[~seen] == float("-inf"))) and bool(torch.all(out32[~seen] == 0))
    o, r = out32[seen], ref_out[seen]  # [N, 512]
    if o.numel() == 0:
        return Errors(0.0, 0.0, 0.0, 0.0, nan_count, 0.0, "-", 0.0, math.nan, math.inf, 0.0, math.inf,
                      math.inf, math.inf, 0.0, empty_ok, str(arith))
    s = _select_stats(st, seen)
    m = model(r, s, arith)
    diff = (o - r).abs()
    ratio = torch.where(diff == 0, torch.zeros_like(diff), diff / m.bound.clamp_min(1e-30))
    k = int(torch.argmax(torch.nan_to_num(ratio, nan=math.inf)))
    lse_diff = (lse[seen] - ref_lse[seen]).abs()
    lse_bound = LSE_ABS + LSE_REL * ref_lse[seen].abs()

    d = o - r.to(OUT_TORCH[arith.out_elem]).to(torch.float32)  # against the rounded reference
    rho, rho_limit, bias, bias_limit, notes = math.nan, math.inf, 0.0, math.inf, []
    rho_noise = bias_noise = math.inf
    if mean_check:
        noise, draws = mean_noise(r, m, s, arith)
        if draws >= MEAN_MIN_COUNT:
            rho = float(d.abs().sum()) / float(m.mean_abs.sum())
            rho_limit = RHO_MAX + Z_MEAN * noise
            bias, bias_limit, bias_noise = _bias(d, r, m, s, arith)
            rho_noise = noise
        else:
            notes.append(f"mean and bias checks skipped: {draws:.0f} independent draws < {MEAN_MIN_COUNT:.0f}")
    return Errors(
        max_abs=float(diff.max()), mean_abs=float(diff.mean()),
        mean_rel=float(diff.mean()) / max(float(r.abs().mean()), 1e-30),
        lse_max_abs=float(lse_diff.max()) if lse_diff.numel() else 0.0,
        nan_count=nan_count, max_ratio=float(ratio.flatten()[k]), worst=_where(seen, k),
        bound=float(m.bound.flatten()[k]), rho=rho, rho_limit=rho_limit, bias=bias,
        bias_limit=bias_limit, rho_noise=rho_noise, bias_noise=bias_noise,
        lse_ratio=float((lse_diff / lse_bound).max()) if lse_diff.numel() else 0.0,
        empty_rows_ok=empty_ok, arith=str(arith), notes=notes,
    )


def _bias(d, r, m: Model, s: Stats, arith: Arith) -> tuple[float, float, float]:
    """(slope of d on r, its limit, its noise).

    Noise: sum_c e_c ref_c = sum_t pi_t d_t (v_t . ref) for the P part, so its variance is
    KAPPA u_p^2 sum_t pi_t^2 (v_t . ref)^2 per row (BW; exact for independent d_t, the row's
    channels share them), plus each element's output-rounding crossings (ulp E|e| ref^2) and
    the small score and subnormal terms. Floor: the accumulation bias (2 beta, the max
    model's), the rounding's own second-order mean (log-uniform p sit slightly more often
    below a grid point than above: E[P~ - p] = KAPPA u_p^2 p, +7e-4 for e4m3, 4e-8 for fp16)
    and BIAS_FLOOR."""
    r2 = float((r * r).sum())
    if r2 <= 0:
        return 0.0, math.inf, math.inf
    bias = float((d * r).sum()) / r2
    u = ulp(r, arith.out_elem)
    var = KAPPA * arith.u_p ** 2 * float(s.BW.sum())
    var += float(((u * m.mean_abs + (m.sigma ** 2 - KAPPA * arith.u_p ** 2 * s.A2x).clamp_min(0)) * r * r).sum())
    floor = float((2 * m.beta * r.abs()).sum()) / r2 + KAPPA * arith.u_p ** 2 + BIAS_FLOOR
    noise = math.sqrt(var) / r2
    return bias, floor + Z_BIAS * noise, noise


def _select_stats(st: Stats, seen) -> Stats:
    """The per-row stats of the rows that see tokens, flattened ([N] per row, [N, 512] per element)."""
    return Stats(A2=st.A2[seen], A2x=st.A2x[seen], BW=st.BW[seen], AS2=st.AS2[seen], SUB2=st.SUB2[seen], pi_max=st.pi_max[seen],
                 s_rms=st.s_rms[seen], n_tokens=st.n_tokens[seen], n2=st.n2[seen])


def _where(seen, k: int) -> str:
    row = seen.nonzero()[k // LATENT]
    return f"row {int(row[0])} head {int(row[1])} channel {k % LATENT}"
