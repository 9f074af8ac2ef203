"""One shape, start to end: make the inputs once, run the fp32 reference once, then per
capture condition (bench/modes.py: eager, graph) run each kernel once and compare, time only
the kernels that were right, check that the timed replays still give the checked answer,
and turn the times into one result row per mode.

The device-specific pieces (timer, synchronisation, free memory, the profiler) come in
through RunSettings, so that the whole path can also run on CPU tensors with fake kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mla_plugin import reference as mla_reference
from mla_plugin.bench import check as bench_check
from mla_plugin.bench import kernel_times as bench_kernel_times
from mla_plugin.bench import kernels as bench_kernels
from mla_plugin.bench import modes as bench_modes
from mla_plugin.bench import residency as bench_residency
from mla_plugin.bench.grid import Shape
from mla_plugin.bench.inputs import input_bytes, make_inputs, request_lengths
from mla_plugin.bench.roofline import KV_DIM, KV_ELEMENT_BYTES, V_DIM, decode_bytes, decode_flops, kernel_metrics, median

MEMORY_HEADROOM = 0.9  # use at most this share of the free device memory
# The reference gathers KV in fp32 a chunk of requests at a time (mla_plugin.reference's
# _GATHER_CHUNK_ELEMENTS, 64 Mi elements = 256 MiB), so its memory stays near 1.5 GB at most
# whatever the shape (reference_bytes), and its work is two fp32 bmm per chunk: an estimated
# 50 ms or so at B128 H128 x 32k on an H200 (1.2 TFLOP in fp32, about 80 GB of elementwise
# traffic; not measured yet), against seconds of timing per shape. It runs once per shape, for
# every mode. 128 x 32k covers the whole default grid; --ref-max-tokens lowers it.
DEFAULT_REFERENCE_MAX_TOKENS = 128 * 32768
_REFERENCE_CHUNK_ELEMENTS = getattr(mla_reference, "_GATHER_CHUNK_ELEMENTS", 64 * 1024 * 1024)


@dataclass
class Contenders:
    """The callables under test; None leaves one out."""
    ours: Callable | None = None  # mla_plugin.ops.mla_decode
    triton: Callable | None = None  # decode_attention_fwd
    reference: Callable | None = None  # mla_plugin.reference.mla_decode_reference


@dataclass
class RunSettings:
    device: object
    sm_count: int
    copy_bw_gbs: float
    mma_peak_tflops: float | None
    timer: Callable[[Callable[[], None]], list]  # fn -> per-repetition times in microseconds
    sync: Callable[[], None] = field(default=lambda: None)
    free_bytes: Callable[[], int | None] = field(default=lambda: None)
    seed: int = 0
    reference_max_tokens: int = DEFAULT_REFERENCE_MAX_TOKENS
    modes: tuple = bench_modes.MODES  # capture conditions, each a row per shape
    max_model_len: int = bench_modes.DEFAULT_MAX_MODEL_LEN  # graph mode's planning length
    sm12x_residency: bool = False  # our calls run with the residency variable set
    # fn -> kernel_times.breakdown dict (--kernel-times); None: no per-kernel times
    kernel_profiler: Callable[[Callable[[], None]], dict] | None = None


def uses_reference(shape: Shape, max_tokens: int) -> bool:
    """The fp32 reference runs where batch x context is at most max_tokens (0: never)."""
    return shape.batch * shape.context <= max_tokens


def reference_bytes(shape: Shape, lengths=None) -> int:
    """A generous guess at the reference's device memory: per chunk of requests, the gathered
    cache (its own dtype, then fp32 three times over), the scores [chunk, Q*H, L] four times
    over, and its whole-batch out and lse (kept while both modes are compared)."""
    longest = max(lengths) if lengths else shape.context
    padded = -(-longest // shape.page_size) * shape.page_size
    per_chunk = max(1, min(shape.batch, _REFERENCE_CHUNK_ELEMENTS // max(1, padded * KV_DIM)))
    gathered = per_chunk * padded * KV_DIM * (KV_ELEMENT_BYTES[shape.dtype] + 3 * 4)
    scores = 4 * 4 * per_chunk * shape.query_len * shape.heads * padded
    result = 2 * 4 * shape.rows * shape.heads * (V_DIM + 1)
    return gathered + scores + result


def mode_bytes(shape: Shape, contenders: Contenders, settings: RunSettings, hint: int) -> int:
    """One mode's own allocations: TRITON_MLA's workspace at that mode's plan, our out and lse,
    and the copies of both outputs kept for the replay check."""
    outputs = shape.rows * shape.heads * (V_DIM * 2 + 4)
    need = 0
    if contenders.triton is not None:
        need += bench_kernels.triton_workspace_bytes(shape, settings.sm_count, hint) + outputs
    if contenders.ours is not None:
        need += 2 * outputs
    return need


def shape_bytes(shape: Shape, contenders: Contenders, settings: RunSettings, lengths=None) -> int:
    """What a shape holds whatever the mode: its inputs, and the reference's work and answer."""
    lengths = lengths or request_lengths(shape, settings.seed)
    need = input_bytes(shape)
    if contenders.reference is not None and uses_reference(shape, settings.reference_max_tokens):
        need += reference_bytes(shape, lengths)
    return need


def required_bytes(shape: Shape, contenders: Contenders, settings: RunSettings, lengths=None,
                   mode: str | None = None) -> int:
    """Device memory a shape needs in `mode` (default: its hungriest mode; the modes run one
    after the other, so they never hold their allocations together)."""
    lengths = lengths or request_lengths(shape, settings.seed)
    modes = [mode] if mode else list(settings.modes)
    hints = [bench_modes.planning_max_seq_len(m, lengths, settings.max_model_len) for m in modes]
    return shape_bytes(shape, contenders, settings, lengths) + max(
        (mode_bytes(shape, contenders, settings, h) for h in hints), default=0)


def base_row(shape: Shape, lengths: list[int], mode: str, settings: RunSettings) -> dict:
    hint = bench_modes.planning_max_seq_len(mode, lengths, settings.max_model_len)
    row = shape.as_dict()
    row.update(label=shape.label, mode=mode, max_model_len=settings.max_model_len if mode == "graph" else None,
               sm12x_residency=bool(settings.sm12x_residency),
               seq_len_min=min(lengths), seq_len_max=max(lengths), seq_len_mean=sum(lengths) / len(lengths),
               tokens=sum(lengths), ours_max_seq_len=hint,
               triton_num_kv_splits=bench_kernels.num_kv_splits(hint, settings.sm_count),
               flops=decode_flops(shape, seq_lens=lengths), bytes=decode_bytes(shape, lengths),
               status=None, note="", ours_us=None, triton_us=None, speedup=None)
    return row


def bench_shape(shape: Shape, contenders: Contenders, settings: RunSettings) -> list[dict]:
    """The result rows of one shape, one per mode in settings.modes; never raises for a
    kernel error or a lack of memory."""
    lengths = request_lengths(shape, settings.seed)
    rows = [base_row(shape, lengths, mode, settings) for mode in settings.modes]
    free = settings.free_bytes()
    if free is not None:  # a mode that would not fit is skipped before anything is allocated
        for row in rows:
            need = required_bytes(shape, contenders, settings, lengths, row["mode"])
            if need > MEMORY_HEADROOM * free:
                row.update(status="skipped", note=f"needs about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
    if all(row["status"] == "skipped" for row in rows):
        return rows
    try:
        inputs = make_inputs(shape, settings.device, settings.seed)  # once: every mode runs on these
        expected, reference_note = _reference(shape, inputs, contenders, settings)
    except Exception as exc:
        for row in rows:
            if row["status"] != "skipped":
                _record_failure(row, exc)
        return rows
    for row in rows:
        if row["status"] == "skipped":
            continue
        try:
            _check_and_time(shape, inputs, expected, contenders, settings, row)
        except Exception as exc:  # one failing mode must not end a long run: report it
            _record_failure(row, exc)
        if reference_note:
            row["note"] = "; ".join(n for n in (row["note"], reference_note) if n)
    return rows


def _record_failure(row: dict, exc: Exception) -> None:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        row.update(status="skipped", note=f"out of memory: {str(exc).splitlines()[0]}")
    else:
        row.update(status="error", note=f"{type(exc).__name__}: {exc}")


def _reference(shape, inputs, contenders, settings):
    """(out, lse) of the fp32 reference, or None; and a note when it could not run."""
    if contenders.reference is None or not uses_reference(shape, settings.reference_max_tokens):
        return None, ""
    try:
        return bench_kernels.run_reference(contenders.reference, inputs), ""
    except torch.cuda.OutOfMemoryError as exc:
        return None, f"reference not run: out of memory ({str(exc).splitlines()[0]})"


def _check_and_time(shape: Shape, inputs, expected, contenders: Contenders, settings: RunSettings,
                    row: dict) -> None:
    hint = row["ours_max_seq_len"]
    calls = {}
    if contenders.ours is not None:
        calls["ours"] = bench_kernels.prepare_ours(contenders.ours, inputs, max_seq_len=hint,
                                                   environment=bench_residency.variables(settings.sm12x_residency))
    if contenders.triton is not None:
        calls["triton"] = bench_kernels.prepare_triton(contenders.triton, inputs, settings.sm_count, max_seq_len=hint)
        row["triton_num_kv_splits"] = calls["triton"].plan["num_kv_splits"]
    for call in calls.values():
        call.poison_outputs()
        call.run()
    settings.sync()

    comparisons = _compare(shape, expected, calls)
    for name, comparison in comparisons.items():
        row[f"{name}_max_abs"] = comparison.max_abs
        row[f"{name}_mean_rel"] = comparison.mean_rel
        row[f"{name}_lse_max_abs"] = comparison.lse_max_abs
    row.update(error_ratios(row))
    ours_ok, triton_ok = _verdicts(comparisons)
    notes = [c.describe() for c in comparisons.values() if not c.ok]

    right = {"ours": ours_ok, "triton": triton_ok}
    tolerances = {"ours": bench_check.ours_tolerance(shape.dtype), "triton": bench_check.triton_tolerance(shape.dtype)}
    for name, call in calls.items():
        if not right[name]:
            continue  # a wrong kernel is reported as wrong, never as fast
        checked_out, checked_lse = call.out.clone(), call.lse.clone()
        times = settings.timer(call.run)
        replay = bench_check.compare(call.out, call.lse, checked_out, checked_lse, tolerances[name],
                                     "its checked call")
        row[f"{name}_replay_max_abs"] = replay.max_abs
        if not replay.ok:  # the timed replays gave another answer: not a time to report
            right[name] = False
            notes.append(f"{call.name} after the timed replays: {replay.describe()}")
            continue
        row[f"{name}_us"] = median(times)
        for key, value in kernel_metrics(shape, row[f"{name}_us"], settings.copy_bw_gbs,
                                         settings.mma_peak_tflops, inputs.lengths).items():
            if key in ("memory_floor_us", "compute_floor_us", "bound"):
                row[key] = value
            else:
                row[f"{name}_{key}"] = value
    if settings.kernel_profiler is not None and "ours" in calls and row["ours_us"] is not None:
        notes.extend(_kernel_times(calls["ours"], settings, row))
    row["status"] = "wrong" if "ours" in calls and not right["ours"] else (
        "triton-wrong" if "triton" in calls and not right["triton"] else "ok")
    row["note"] = "; ".join(notes)
    if row["ours_us"] is not None and row["triton_us"] is not None:
        row["speedup"] = row["triton_us"] / row["ours_us"]


def _kernel_times(call, settings: RunSettings, row: dict) -> list[str]:
    """Our op's per-kernel device times into the row; the notes to add (never raises)."""
    try:
        result = settings.kernel_profiler(call.run)
    except Exception as exc:
        return [f"kernel times failed: {type(exc).__name__}: {exc}"]
    row.update(bench_kernel_times.row_fields(result))
    return [result["note"]] if result.get("note") else []


def error_ratios(row: dict) -> dict:
    """ours / TRITON_MLA of each error against the reference (None where either is missing,
    not finite, or TRITON_MLA's is zero)."""
    ratios = {}
    for measure in ("max_abs", "mean_rel"):
        ours, triton = row.get(f"ours_vs_reference_{measure}"), row.get(f"triton_vs_reference_{measure}")
        ok = (ours is not None and triton is not None and triton > 0
              and ours == ours and triton == triton and ours != float("inf") and triton != float("inf"))
        ratios[f"{measure}_ratio"] = ours / triton if ok else None
    return ratios


def _compare(shape, expected, calls) -> dict:
    comparisons = {}
    if expected is not None:
        ref_out, ref_lse = expected
        if "ours" in calls:
            comparisons["ours_vs_reference"] = bench_check.compare(
                calls["ours"].out, calls["ours"].lse, ref_out, ref_lse,
                bench_check.ours_tolerance(shape.dtype), "reference")
        if "triton" in calls:
            comparisons["triton_vs_reference"] = bench_check.compare(
                calls["triton"].out, calls["triton"].lse, ref_out, ref_lse,
                bench_check.triton_tolerance(shape.dtype), "reference")
    if "ours" in calls and "triton" in calls:
        comparisons["ours_vs_triton"] = bench_check.compare(
            calls["ours"].out, calls["ours"].lse, calls["triton"].out, calls["triton"].lse,
            bench_check.cross_tolerance(shape.dtype), "TRITON_MLA")
    return comparisons


def _verdicts(comparisons: dict) -> tuple[bool, bool]:
    """(ours right, TRITON_MLA right). The reference decides when it ran; a TRITON_MLA
    that fails it cannot judge ours. Without the reference, a disagreement with
    TRITON_MLA (vLLM's tested kernel) counts against ours."""
    triton_ok = comparisons.get("triton_vs_reference", None)
    triton_ok = True if triton_ok is None else triton_ok.ok
    ours_ok = True
    if "ours_vs_reference" in comparisons:
        ours_ok = comparisons["ours_vs_reference"].ok
    if "ours_vs_triton" in comparisons and triton_ok:
        ours_ok = ours_ok and comparisons["ours_vs_triton"].ok
    return ours_ok, triton_ok


def preflight(contenders: Contenders, settings: RunSettings, dtypes, page_size: int) -> list[str]:
    """Run each kernel once on a tiny shape per dtype and mode, before spending minutes on the
    grid. Returns the failures as messages (empty when every kernel ran)."""
    failures = []
    environment = bench_residency.variables(settings.sm12x_residency)
    for dtype in dtypes:
        shape = Shape(batch=1, heads=16, context=2 * page_size, dtype=dtype, page_size=page_size)
        inputs = make_inputs(shape, settings.device, settings.seed)
        for mode in settings.modes:
            hint = bench_modes.planning_max_seq_len(mode, inputs.lengths, settings.max_model_len)
            calls = []
            if contenders.ours is not None:
                calls.append(("our kernel", lambda: bench_kernels.prepare_ours(
                    contenders.ours, inputs, max_seq_len=hint, environment=environment)))
            if contenders.triton is not None:
                calls.append(("TRITON_MLA", lambda: bench_kernels.prepare_triton(
                    contenders.triton, inputs, settings.sm_count, max_seq_len=hint)))
            for name, prepare in calls:
                try:
                    prepare().run()
                    settings.sync()
                except Exception as exc:
                    failures.append(f"{name} fails on {shape.label} (page {page_size}, {mode} mode): "
                                    f"{type(exc).__name__}: {exc}")
    return failures
