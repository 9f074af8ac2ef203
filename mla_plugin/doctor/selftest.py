"""`python -m mla_plugin doctor --run`: the self-test of the kernel on this machine's GPUs.

On each served GPU: build or load the kernel, run the fixed decode CASES against the fp32
reference (cases.py builds them the hard way), judge each against the tolerance of its
cache dtype, then time TIMED_SHAPES against vLLM's TRITON_MLA kernel when it imports. GPUs
doctor does not serve are listed as skipped, with the reason.

This module is the judgement and the report, with no torch: the GPU work comes in through a
runner (gpu.CudaRunner on a real machine; the CPU tests pass a fake one), so every verdict,
message and exit status is tested without a GPU.

Exit status of `doctor --run` (the self-test's; serving blockers are still printed as
BLOCKED lines and are in the report):
    0  every case right on every served GPU
    1  nothing could be tested: no served GPU, or no CUDA torch
    2  a case wrong, or the kernel failed to build, load, run or be timed on a served GPU
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass

from mla_plugin.bench.grid import Shape

EXIT_PASS = 0
EXIT_NOT_RUN = 1
EXIT_FAILED = 2

# ------------------------------------------------------------------------- tolerances
# bf16 cache: the kernel's only rounding is the bf16 output and P in 16 bits.
BF16_MAX_ABS = 2e-2
BF16_MEAN_REL = 1e-2
# fp8 cache, default 16-bit math, judged against the reference on the dequantised cache and
# the caller's q: what remains is P in f16 and the bf16 output, as for a bf16 cache.
FP8_MAX_ABS = 2e-2
FP8_MEAN_REL = 1e-2
# fp8 cache under the e4m3 opt-in (MLA_PLUGIN_FP8_MATH=e4m3), judged against q rounded as the
# kernel rounds it: what remains is P stored in e4m3 (3 mantissa bits), ~1.5% relative.
FP8_E4M3_MAX_ABS = 3e-2
FP8_E4M3_MEAN_REL = 2e-2
LSE_MAX_ABS = 1e-3  # natural-log lse, both dtypes (fp32 on both sides)


@dataclass(frozen=True)
class Tolerance:
    max_abs: float
    mean_rel: float


TOLERANCES = {"bf16": Tolerance(BF16_MAX_ABS, BF16_MEAN_REL),
              "fp8": Tolerance(FP8_MAX_ABS, FP8_MEAN_REL)}
E4M3_TOLERANCE = Tolerance(FP8_E4M3_MAX_ABS, FP8_E4M3_MEAN_REL)


def tolerance_for(dtype: str) -> Tolerance:
    """The case's tolerance under this process's FP8 math."""
    from mla_plugin.doctor.cases import e4m3_math

    return E4M3_TOLERANCE if dtype == "fp8" and e4m3_math() else TOLERANCES[dtype]

# The data (cases.py and bench/inputs.py use the same): q, K, V ~ N(0, 1).
SOFTMAX_SCALE = 1.0 / math.sqrt(192)
FP8_KV_SCALE = 0.05


# ------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class SelfTestCase:
    dtype: str  # KV cache: "bf16" or "fp8" (q is bf16 in both)
    heads: int
    page_size: int
    query_len: int
    seq_lens: tuple[int, ...]  # per request, including the query_len new tokens; 0 = padding row
    seed: int = 0

    @property
    def batch(self) -> int:
        return len(self.seq_lens)

    @property
    def name(self) -> str:
        return (f"{self.dtype} H{self.heads} page{self.page_size} q{self.query_len} "
                f"lens {','.join(map(str, self.seq_lens))}")

    def as_dict(self) -> dict:
        return {**asdict(self), "seq_lens": list(self.seq_lens), "name": self.name}


# Both dtypes x H 16 / 128 x page 16 / 64 x query_len 1 / 2, each batch ragged and with a
# seq_len 0 padding row, plus one long single request per dtype (split KV and its combine).
# FP8 lengths stay >= 513 (or 1 token, which is exact): under the e4m3 opt-in, over a handful
# of tokens P's e4m3 rounding is not averaged out and reaches ~0.09 max abs, past its tolerance
# by design, not by a bug (tests/gpu covers short FP8 rows with bounds derived for them).
CASES = (
    SelfTestCase("bf16", 16, 16, 1, (1, 700, 0, 4097, 33), seed=1),
    SelfTestCase("bf16", 128, 64, 1, (2049, 0, 300), seed=2),
    SelfTestCase("bf16", 16, 64, 2, (1000, 2, 0, 65), seed=3),
    SelfTestCase("bf16", 128, 16, 2, (513, 0, 1500), seed=4),
    SelfTestCase("bf16", 16, 64, 1, (16384, 0), seed=5),
    SelfTestCase("fp8", 16, 16, 1, (1, 700, 0, 4097), seed=6),
    SelfTestCase("fp8", 128, 64, 1, (2049, 0, 600), seed=7),
    SelfTestCase("fp8", 16, 64, 2, (1000, 0, 3000, 513), seed=8),
    SelfTestCase("fp8", 128, 16, 2, (800, 0, 1537), seed=9),
    SelfTestCase("fp8", 16, 64, 1, (16384, 0), seed=10),
)

# Timed against TRITON_MLA: one request, a small batch and a TP1 DeepSeek batch, both dtypes.
TIMED_SHAPES = tuple(Shape(batch=b, heads=h, context=4096, dtype=d)
                     for d in ("bf16", "fp8") for b, h in ((1, 16), (8, 16), (32, 128)))
TIMING_REPS = 30
TIMING_WARMUP = 3
TIME_TARGET_S = 60.0  # after the kernel is built or loaded


def judge(case: SelfTestCase, errors: dict) -> list[str]:
    """What is wrong with one case's errors (measure()'s dict): [] when it passes."""
    tol = tolerance_for(case.dtype)
    problems = []
    if errors.get("nan_count"):
        problems.append(f"{errors['nan_count']} NaN in the output")
    if errors.get("inf_count"):
        problems.append(f"{errors['inf_count']} inf in the output")
    if not errors.get("padding_rows_ok", False):
        problems.append("a row that sees no token (seq_len 0) is not zeros with lse -inf")
    max_abs, mean_rel, lse = errors.get("max_abs"), errors.get("mean_rel"), errors.get("lse_max_abs")
    if max_abs is None:
        problems.append("no finite output to compare")
    elif not max_abs <= tol.max_abs:
        problems.append(f"max abs error {max_abs:.3g} > {tol.max_abs:g}")
    if mean_rel is not None and not mean_rel <= tol.mean_rel:
        problems.append(f"mean relative error {mean_rel:.3g} > {tol.mean_rel:g}")
    if lse is not None and not lse <= LSE_MAX_ABS:
        problems.append(f"lse error {lse:.3g} > {LSE_MAX_ABS:g}")
    return problems


def tolerance_text() -> str:
    bf, f8 = TOLERANCES["bf16"], tolerance_for("fp8")
    return (f"pass = no NaN/inf, seq_len 0 rows exactly 0 with lse -inf, lse error <= "
            f"{LSE_MAX_ABS:g}, and bf16: max abs <= {bf.max_abs:g}, mean rel <= {bf.mean_rel:g}; "
            f"fp8 (reference on the dequantised cache{', q rounded as the e4m3 math rounds it' if f8 is E4M3_TOLERANCE else ''}): "
            f"max abs <= {f8.max_abs:g}, mean rel <= {f8.mean_rel:g}")


# ----------------------------------------------------------------------------- runner
class Runner:
    """The GPU side of the self-test (gpu.CudaRunner); every method may raise, and the
    self-test records what it raised."""

    def versions(self) -> dict:  # torch, triton, CUDA, driver, ...
        raise NotImplementedError

    def describe(self, index: int) -> dict:  # name, capability, sm_count, memory_bytes, ...
        raise NotImplementedError

    def load_kernel(self, index: int) -> dict:  # {"source": ..., "detail": ..., "seconds": ...}
        raise NotImplementedError

    def check_case(self, index: int, case: SelfTestCase) -> dict:  # cases.measure()'s dict
        raise NotImplementedError

    def load_triton(self):  # -> (decode_attention_fwd, where from); raises with the reason
        raise NotImplementedError

    def time_shape(self, index: int, shape: Shape, triton) -> dict:
        """{"ours_us": float, "triton_us": float | None, "triton_error": str | None};
        raises when our kernel can't be timed."""
        raise NotImplementedError


def progress(message: str) -> None:
    print(f"[doctor --run] {message}", file=sys.stderr, flush=True)


def _error_text(exc: BaseException, limit: int = 20000) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else text


def triton_unavailable(exc: BaseException) -> str:
    """'TRITON_MLA not available: <why>' from load_triton's exception."""
    why = str(exc).strip()
    for prefix in ("TRITON_MLA is not available: ", "TRITON_MLA not available: ", "TRITON_MLA: "):
        if why.startswith(prefix):
            why = why[len(prefix):]
    return f"TRITON_MLA not available: {why or type(exc).__name__}"


def _not_run(report: dict, code: str, reason: str) -> dict:
    report.update(status="not-run", ok=False, exit_status=EXIT_NOT_RUN, reason=reason,
                  summary=f"doctor --run: NOT RUN ({code})")
    return report


def base_report() -> dict:
    return {
        "status": None, "ok": False, "exit_status": None, "reason": None, "summary": None,
        "tolerances": {**{d: asdict(t) for d, t in TOLERANCES.items()}, "lse_max_abs": LSE_MAX_ABS,
                       "mean_rel_is": "sum |out - ref| / sum |ref| over rows that see tokens",
                       "text": tolerance_text()},
        "cases": [c.as_dict() for c in CASES],
        "timed_shapes": [s.label for s in TIMED_SHAPES],
        "versions": {}, "gpus": [], "failures": [], "notes": [], "elapsed_s": None,
    }


def failed_report(stage: str, error: str) -> dict:
    """The report when the self-test itself could not go on (a broken torch, a bug here)."""
    report = base_report()
    report.update(status="fail", exit_status=EXIT_FAILED, reason=error,
                  failures=[f"{stage}: {_first_line(error)}"],
                  summary=f"doctor --run: FAIL ({stage})")
    return report


def run_selftest(facts, verdict, runner: Runner, say=progress, clock=time.monotonic) -> dict:
    """The self-test report (a JSON-ready dict) of every GPU in `verdict`."""
    start = clock()
    report = base_report()
    for g in verdict.gpus:
        if not g.served:
            report["gpus"].append({"index": g.index, "name": g.name, "capability": g.capability,
                                   "status": "skipped", "reason": g.reason})
    if facts.torch is None:
        return _not_run(report, "torch-missing", f"torch does not import ({facts.torch_error})")
    if facts.torch_cuda is None:
        return _not_run(report, "torch-cpu-only", f"torch {facts.torch} is a CPU-only build")
    served = [g for g in verdict.gpus if g.served]
    if not served:
        blocked = [p for p in verdict.problems if p.code in ("no-gpu", "no-served-gpu")]
        if blocked:
            return _not_run(report, blocked[0].code, blocked[0].message)
        return _not_run(report, "no-served-gpu", "no visible GPU is served")
    try:
        report["versions"] = runner.versions()
    except Exception as exc:  # the report still goes out, saying so
        report["versions"] = {"error": _error_text(exc)}
    report["versions"].setdefault("vllm", facts.vllm)

    triton_state: dict = {}
    timed_models: dict[str, int] = {}
    for g in served:
        entry = _test_gpu(g, runner, report, triton_state, timed_models, say, clock)
        report["gpus"].append(entry)
    report["gpus"].sort(key=lambda e: e["index"])
    report["elapsed_s"] = round(clock() - start, 1)

    tested = [e for e in report["gpus"] if e["status"] in ("passed", "failed")]
    failed = bool(report["failures"])
    report["status"] = "fail" if failed else "pass"
    report["ok"] = not failed
    report["exit_status"] = EXIT_FAILED if failed else EXIT_PASS
    n_cases = sum(len(e.get("cases", [])) for e in tested)
    n_timed = sum(len((e.get("timings") or {}).get("shapes", [])) for e in tested)
    if failed:
        kinds = sorted({f.split(":", 1)[0] for f in report["failures"]})
        report["summary"] = (f"doctor --run: FAIL ({len(report['failures'])} failure(s): "
                             f"{', '.join(kinds)})")
    else:
        report["summary"] = (f"doctor --run: PASS ({n_cases} cases on {len(tested)} GPU(s), "
                             f"{n_timed} shapes timed)")
    return report


def _test_gpu(g, runner: Runner, report: dict, triton_state: dict, timed_models: dict,
              say, clock) -> dict:
    entry = {"index": g.index, "name": g.name, "capability": g.capability, "status": None,
             "reason": None, "kernel": None, "cases": [], "timings": None}
    failures = report["failures"]
    where = f"GPU {g.index} ({g.name})"
    try:
        entry.update({k: v for k, v in runner.describe(g.index).items() if k not in ("index",)})
    except Exception as exc:
        entry["describe_error"] = _error_text(exc)
    say(f"{where}: building or loading the kernel")
    try:
        entry["kernel"] = runner.load_kernel(g.index)
    except Exception as exc:
        text = _error_text(exc)
        entry.update(status="failed", reason=f"the kernel did not build or load: {text}")
        failures.append(f"kernel-build: {where}: {_first_line(text)}")
        say(f"{where}: FAILED to build or load the kernel: {_first_line(text)}")
        return entry
    after_build = clock()
    say(f"{where}: kernel {entry['kernel'].get('source', '?')}; running {len(CASES)} cases")

    raised = False
    for number, case in enumerate(CASES, 1):
        result = {**case.as_dict(), "tolerance": asdict(tolerance_for(case.dtype)),
                  "status": None, "problems": [], "error": None}
        try:
            errors = runner.check_case(g.index, case)
        except Exception as exc:
            raised = True
            text = _error_text(exc)
            result.update(status="error", error=text, problems=[f"raised {_first_line(text)}"])
            failures.append(f"case-error: {where}: {case.name}: {_first_line(text)}")
        else:
            result.update(errors)
            result["problems"] = judge(case, errors)
            result["status"] = "wrong" if result["problems"] else "pass"
            if result["problems"]:
                failures.append(f"wrong-case: {where}: {case.name}: {'; '.join(result['problems'])}")
        entry["cases"].append(result)
        say(f"{where}: case {number}/{len(CASES)} {case.name}: {_case_brief(result)}")

    entry["timings"] = _time_gpu(g, runner, report, triton_state, timed_models, raised, where, say)
    entry["seconds_after_kernel"] = round(clock() - after_build, 1)
    if entry["seconds_after_kernel"] > TIME_TARGET_S:
        report["notes"].append(f"{where}: the cases and timings took {entry['seconds_after_kernel']} s "
                               f"after the kernel load (target: under {TIME_TARGET_S:.0f} s)")
    bad = [c for c in entry["cases"] if c["status"] != "pass"]
    timing_failed = bool(entry["timings"] and entry["timings"].get("failed"))
    entry["status"] = "failed" if bad or timing_failed else "passed"
    if bad:
        entry["reason"] = f"{len(bad)} of {len(CASES)} cases wrong or failed"
    elif timing_failed:
        entry["reason"] = "the kernel failed while being timed"
    return entry


def _case_brief(result: dict, marked: bool = True) -> str:
    """One case's numbers; `marked` says ERROR / WRONG in front (the progress line)."""
    if result["status"] == "error":
        first = _first_line(result["error"])
        return f"ERROR {first}" if marked else first
    text = (f"max abs {_num(result.get('max_abs'))}, mean rel {_num(result.get('mean_rel'))}, "
            f"lse {_num(result.get('lse_max_abs'))}, NaN {result.get('nan_count')}")
    if result["status"] == "pass":
        return text
    return f"{'WRONG ' if marked else ''}({'; '.join(result['problems'])}); {text}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def _time_gpu(g, runner, report, triton_state, timed_models, raised, where, say) -> dict:
    timings = {"method": (f"CUDA-graph replay, median of {TIMING_REPS} after {TIMING_WARMUP} "
                          f"warm-ups, L2 flushed before each (mla_plugin.bench.device.time_us_graph)"),
               "triton": None, "shapes": [], "skipped": None, "failed": False}
    if raised:
        timings["skipped"] = "a case raised (the GPU's CUDA context may be unusable): not timed"
        return timings
    if g.name in timed_models:
        timings["skipped"] = (f"same GPU model as GPU {timed_models[g.name]}, timed there")
        return timings
    timed_models[g.name] = g.index
    if "fn" not in triton_state:
        try:
            triton_state["fn"], where_from = runner.load_triton()
            triton_state["text"] = f"TRITON_MLA from {where_from}"
        except Exception as exc:
            triton_state["fn"] = None
            triton_state["text"] = triton_unavailable(exc)
            report["notes"].append(triton_state["text"])
    timings["triton"] = triton_state["text"]
    say(f"{where}: timing {len(TIMED_SHAPES)} shapes; {triton_state['text']}")
    for shape in TIMED_SHAPES:
        row = {"label": shape.label, **shape.as_dict(), "ours_us": None, "triton_us": None,
               "speedup": None, "error": None, "triton_error": None}
        try:
            row.update(runner.time_shape(g.index, shape, triton_state["fn"]))
        except Exception as exc:
            text = _error_text(exc)
            row["error"] = text
            timings["failed"] = True
            report["failures"].append(f"timing-error: {where}: {shape.label}: {_first_line(text)}")
        if row.get("triton_error"):
            report["notes"].append(f"{where}: TRITON_MLA failed on {shape.label}: "
                                   f"{_first_line(row['triton_error'])}")
        if row.get("ours_us") and row.get("triton_us"):
            row["speedup"] = round(row["triton_us"] / row["ours_us"], 3)
        timings["shapes"].append(row)
        say(f"{where}: {shape.label}: {_timing_brief(row)}")
    return timings


def _timing_brief(row: dict) -> str:
    if row.get("error"):
        return f"ERROR {_first_line(row['error'])}"
    text = f"ours {row['ours_us']:.1f} us"
    if row.get("triton_us") is not None:
        text += f", TRITON_MLA {row['triton_us']:.1f} us ({row['speedup']:.2f}x)"
    elif row.get("triton_error"):
        text += f", TRITON_MLA failed: {_first_line(row['triton_error'])}"
    return text


# ------------------------------------------------------------------------------- text
def render_text(report: dict) -> list[str]:
    if report["status"] == "not-run":
        skipped = [f"GPU {e['index']}  {e['name']}  compute capability {e['capability']}: "
                   f"skipped: {e['reason']}" for e in report["gpus"]]
        return skipped + [f"self-test not run: {report['reason']}", report["summary"]]
    lines = [f"self-test: {len(CASES)} decode cases per served GPU against the fp32 reference; "
             f"{report['tolerances']['text']}"]
    for e in report["gpus"]:
        head = f"GPU {e['index']}  {e['name']}  compute capability {e['capability']}"
        if e["status"] == "skipped":
            lines.append(f"{head}: skipped: {e['reason']}")
            continue
        if e.get("sm_count"):
            head += f"  {e['sm_count']} SMs"
        kernel = e.get("kernel") or {}
        if e["status"] == "failed" and not kernel:
            lines.append(f"{head}: FAILED: {_first_line(e['reason'])}")
            continue
        lines.append(f"{head}: kernel {kernel.get('source', '?')}"
                     + (f" ({kernel['detail']})" if kernel.get("detail") else ""))
        for c in e["cases"]:
            mark = {"pass": "ok   ", "wrong": "WRONG", "error": "ERROR"}[c["status"]]
            lines.append(f"  {mark} {c['name']:<40} {_case_brief(c, marked=False)}")
        t = e.get("timings") or {}
        if t.get("skipped"):
            lines.append(f"  timings: {t['skipped']}")
        elif t:
            lines.append(f"  timings ({t['method']}); {t['triton']}:")
            for row in t["shapes"]:
                lines.append(f"    {row['label']:<18} {_timing_brief(row)}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"FAIL {f}" for f in report["failures"]]
    lines.append(report["summary"])
    return lines


def json_safe(value):
    """The report with every non-finite float as None, so it is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
