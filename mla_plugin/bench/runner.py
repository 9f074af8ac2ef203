"""One shape, start to end: make the inputs, run each kernel once and compare, then time
only the kernels that were right, and turn the times into a result row.

The device-specific pieces (timer, synchronisation, free memory) come in through
RunSettings, so that the whole path can also run on CPU tensors with fake kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mla_plugin.bench import check as bench_check
from mla_plugin.bench import kernels as bench_kernels
from mla_plugin.bench.grid import Shape
from mla_plugin.bench.inputs import input_bytes, make_inputs
from mla_plugin.bench.roofline import KV_DIM, decode_bytes, decode_flops, kernel_metrics, median

MEMORY_HEADROOM = 0.9  # use at most this share of the free device memory
DEFAULT_REFERENCE_MAX_TOKENS = 16384


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


def uses_reference(shape: Shape, max_tokens: int) -> bool:
    """The fp32 reference gathers every request's KV in fp32: small shapes only."""
    return shape.batch * shape.context <= max_tokens


def reference_bytes(shape: Shape) -> int:
    """A generous guess at the reference's temporaries: KV and the scores in fp32, 3x."""
    return 3 * 4 * (shape.batch * shape.context * KV_DIM + shape.rows * shape.heads * shape.context)


def required_bytes(shape: Shape, contenders: Contenders, settings: RunSettings) -> int:
    need = input_bytes(shape)
    if contenders.triton is not None:
        need += bench_kernels.triton_workspace_bytes(shape, settings.sm_count)
    if contenders.reference is not None and uses_reference(shape, settings.reference_max_tokens):
        need += reference_bytes(shape)
    return need


def base_row(shape: Shape) -> dict:
    row = shape.as_dict()
    row.update(label=shape.label, flops=decode_flops(shape), bytes=decode_bytes(shape),
               status=None, note="", ours_us=None, triton_us=None, speedup=None)
    return row


def bench_shape(shape: Shape, contenders: Contenders, settings: RunSettings) -> dict:
    """The result row of one shape; never raises for a kernel error or a lack of memory."""
    row = base_row(shape)
    need = required_bytes(shape, contenders, settings)
    free = settings.free_bytes()
    if free is not None and need > MEMORY_HEADROOM * free:
        row.update(status="skipped", note=f"needs about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
        return row
    try:
        _check_and_time(shape, contenders, settings, row)
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="skipped", note=f"out of memory: {str(exc).splitlines()[0]}")
    except Exception as exc:  # one failing shape must not end a long run: report it
        row.update(status="error", note=f"{type(exc).__name__}: {exc}")
    return row


def _check_and_time(shape: Shape, contenders: Contenders, settings: RunSettings, row: dict) -> None:
    inputs = make_inputs(shape, settings.device, settings.seed)
    calls = {}
    if contenders.ours is not None:
        calls["ours"] = bench_kernels.prepare_ours(contenders.ours, inputs)
    if contenders.triton is not None:
        calls["triton"] = bench_kernels.prepare_triton(contenders.triton, inputs, settings.sm_count)
    for call in calls.values():
        call.poison_outputs()
        call.run()
    settings.sync()

    comparisons = _compare(shape, inputs, calls, contenders, settings)
    for name, comparison in comparisons.items():
        row[f"{name}_max_abs"] = comparison.max_abs
        row[f"{name}_mean_rel"] = comparison.mean_rel
        row[f"{name}_lse_max_abs"] = comparison.lse_max_abs
    ours_ok, triton_ok = _verdicts(comparisons)
    row["status"] = "wrong" if "ours" in calls and not ours_ok else (
        "triton-wrong" if "triton" in calls and not triton_ok else "ok")
    row["note"] = "; ".join(c.describe() for c in comparisons.values() if not c.ok)

    right = {"ours": ours_ok, "triton": triton_ok}
    for name, call in calls.items():
        if not right[name]:
            continue  # a wrong kernel is reported as wrong, never as fast
        row[f"{name}_us"] = median(settings.timer(call.run))
        for key, value in kernel_metrics(shape, row[f"{name}_us"], settings.copy_bw_gbs,
                                         settings.mma_peak_tflops).items():
            if key in ("memory_floor_us", "compute_floor_us", "bound"):
                row[key] = value
            else:
                row[f"{name}_{key}"] = value
    if row["ours_us"] is not None and row["triton_us"] is not None:
        row["speedup"] = row["triton_us"] / row["ours_us"]


def _compare(shape, inputs, calls, contenders, settings) -> dict:
    comparisons = {}
    if contenders.reference is not None and uses_reference(shape, settings.reference_max_tokens):
        ref_out, ref_lse = bench_kernels.run_reference(contenders.reference, inputs)
        if "ours" in calls:
            comparisons["ours_vs_reference"] = bench_check.compare(
                calls["ours"].out, calls["ours"].lse, ref_out, ref_lse,
                bench_check.ours_tolerance(shape.dtype), "reference")
        if "triton" in calls:
            comparisons["triton_vs_reference"] = bench_check.compare(
                calls["triton"].out, calls["triton"].lse, ref_out, ref_lse,
                bench_check.triton_tolerance(shape.dtype), "reference")
        del ref_out, ref_lse
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
    """Run each kernel once on a tiny shape per dtype, before spending minutes on the grid.
    Returns the failures as messages (empty when every kernel ran)."""
    failures = []
    for dtype in dtypes:
        shape = Shape(batch=1, heads=16, context=2 * page_size, dtype=dtype, page_size=page_size)
        inputs = make_inputs(shape, settings.device, settings.seed)
        calls = []
        if contenders.ours is not None:
            calls.append(("our kernel", lambda: bench_kernels.prepare_ours(contenders.ours, inputs)))
        if contenders.triton is not None:
            calls.append(("TRITON_MLA", lambda: bench_kernels.prepare_triton(contenders.triton, inputs,
                                                                            settings.sm_count)))
        for name, prepare in calls:
            try:
                prepare().run()
                settings.sync()
            except Exception as exc:
                failures.append(f"{name} fails on {shape.label} (page {page_size}): {type(exc).__name__}: {exc}")
    return failures
