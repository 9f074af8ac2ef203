"""python -m mla_plugin bench: time our MLA decode kernel against vLLM's TRITON_MLA and
against the device's own limits, measured in the same run.

    python -m mla_plugin bench --quick                    # a 16-shape smoke run
    python -m mla_plugin bench                            # the full 320-shape grid
    python -m mla_plugin bench --batch 1,64 --heads 128 --context 4k,32k --dtype fp8

Per shape it prints ours / TRITON_MLA in microseconds, the speed-up, GB/s and TFLOP/s with
their % of the measured copy bandwidth and mma.sync peak; then geo-mean speed-ups, and
writes CSV, JSON and (with matplotlib) a PNG into --out-dir. Progress goes to stderr.
Exit status: 0 all right, 1 some shape wrong or failed, 2 could not run (no CUDA, a
kernel missing, a bad option).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from mla_plugin.bench import grid as bench_grid
from mla_plugin.bench import kernels as bench_kernels
from mla_plugin.bench import report as bench_report
from mla_plugin.bench.runner import DEFAULT_REFERENCE_MAX_TOKENS, Contenders, RunSettings, bench_shape, preflight

MIN_REPS = 20
DEFAULT_REPS = 30
DEFAULT_WARMUP = 5
DEFAULT_OUT_DIR = os.path.join("out", "bench")  # out/ is git-ignored


def add_arguments(parser: argparse.ArgumentParser) -> None:
    grid = parser.add_argument_group("shapes (each list is comma-separated; the grid is every combination)")
    grid.add_argument("--batch", help="requests per step (default 1,8,32,64,128)")
    grid.add_argument("--heads", help="query heads, at most 128 (default 16,32,64,128)")
    grid.add_argument("--context", help="tokens per request, k = 1024 (default 1k,4k,16k,32k)")
    grid.add_argument("--dtype", help="KV cache dtypes: bf16, fp8 (default both)")
    grid.add_argument("--page-size", type=int, default=bench_grid.DEFAULT_PAGE_SIZE,
                      help="tokens per KV page: 16, 32, 64 or 128 (default 64)")
    grid.add_argument("--query-len", type=int, default=1, help="query tokens per request, 1..8 (default 1)")
    grid.add_argument("--quick", action="store_true",
                      help="smoke run: batch 1,32 x heads 16,128 x context 1k,4k (options given still win)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--reps", type=int, default=DEFAULT_REPS,
                        help=f"timed repetitions per kernel and shape, median reported (at least {MIN_REPS}; "
                             f"default {DEFAULT_REPS})")
    timing.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed calls first (default 5)")
    timing.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    contenders = parser.add_argument_group("what runs")
    contenders.add_argument("--triton-path", default=bench_kernels.DEFAULT_TRITON_PATH,
                            help="folder from shared/tools/fetch-triton-mla, used when vLLM is not "
                                 "importable (default .peers/triton_mla)")
    contenders.add_argument("--no-triton", action="store_true", help="time our kernel alone")
    contenders.add_argument("--no-ours", action="store_true",
                            help="time TRITON_MLA alone (to check the instrument before our kernel exists)")
    contenders.add_argument("--ref-max-tokens", type=int, default=DEFAULT_REFERENCE_MAX_TOKENS,
                            help="also check against the fp32 reference where batch x context is at most "
                                 f"this (default {DEFAULT_REFERENCE_MAX_TOKENS}; 0 = never)")
    contenders.add_argument("--mma-peak-tflops", type=float,
                            help="use this mma.sync BF16 peak instead of measuring it")
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR,
                        help=f"where the CSV, JSON and PNG go (default ./{DEFAULT_OUT_DIR})")


def main(args: argparse.Namespace) -> int:
    try:
        shapes = _shapes(args)
    except ValueError as exc:
        return _refuse(str(exc))

    from mla_plugin.bench import device as bench_device  # imports torch: after the cheap option checks

    missing = bench_device.cuda_missing_message()
    if missing:
        return _refuse(missing)
    try:
        contenders, sources = _load_contenders(args)
    except bench_kernels.KernelUnavailable as exc:
        return _refuse(str(exc))
    return _run(args, shapes, contenders, sources, bench_device)


def _shapes(args) -> list:
    if args.reps < MIN_REPS:
        raise ValueError(f"--reps: {args.reps} is fewer than {MIN_REPS} (the median needs them)")
    if args.warmup < 1:
        raise ValueError("--warmup: at least 1 (the first call compiles Triton kernels)")
    if args.no_ours and args.no_triton:
        raise ValueError("--no-ours with --no-triton leaves nothing to time")
    return bench_grid.grid_from_options(batch=args.batch, heads=args.heads, context=args.context,
                                        dtype=args.dtype, page_size=args.page_size,
                                        query_len=args.query_len, quick=args.quick)


def _load_contenders(args) -> tuple[Contenders, dict]:
    contenders, sources = Contenders(), {}
    if not args.no_ours:
        contenders.ours = bench_kernels.load_ours()
        sources["ours"] = "mla_plugin.ops.mla_decode"
    if not args.no_triton:
        contenders.triton, sources["triton"] = bench_kernels.load_triton_mla(args.triton_path)
    if args.ref_max_tokens > 0:
        try:
            contenders.reference = bench_kernels.load_reference()
            sources["reference"] = f"mla_plugin.reference, shapes with batch x context <= {args.ref_max_tokens}"
        except bench_kernels.KernelUnavailable as exc:
            sources["reference"] = f"not used: {exc}"
    else:
        sources["reference"] = "not used (--ref-max-tokens 0)"
    return contenders, sources


def _run(args, shapes, contenders, sources, bench_device) -> int:
    device = bench_device.current_device()
    info = bench_device.describe_device(device)
    _progress(f"measuring copy bandwidth and mma.sync peak on {info['name']}")
    copy = bench_device.measure_copy_bandwidth(device)
    if args.mma_peak_tflops:
        mma = {"mma_peak_tflops": args.mma_peak_tflops, "mma_peak_source": "given (--mma-peak-tflops)"}
    else:
        mma = bench_device.measure_mma_peak(device)
    flusher = bench_device.L2Flusher(device)
    settings = RunSettings(
        device=device, sm_count=info["sm_count"], copy_bw_gbs=copy["copy_bw_gbs"],
        mma_peak_tflops=mma["mma_peak_tflops"],
        timer=lambda fn: bench_device.time_us_graph(fn, reps=args.reps, warmup=args.warmup, flush=flusher),
        sync=bench_device.synchronize, free_bytes=lambda: bench_device.free_bytes(device),
        seed=args.seed, reference_max_tokens=args.ref_max_tokens)
    method = (f"each kernel captured in a CUDA graph (no host launch cost, as in vLLM's decode), "
              f"CUDA events around each replay, L2 flushed ({flusher.nbytes >> 20} MiB zeroed) before "
              f"each, {args.warmup} warm-up, median of {args.reps}")
    _print_preamble(info, copy, mma, sources, method, shapes)

    failures = preflight(contenders, settings, sorted({s.dtype for s in shapes}), args.page_size)
    if failures:
        return _refuse("a kernel fails before the grid starts:\n  " + "\n  ".join(failures)
                       + "\n(leave it out with --no-ours / --no-triton, or narrow --dtype)")

    rows = _run_grid(shapes, contenders, settings, bench_device.release_cached_memory)
    summary = bench_report.summarize(rows)
    print()
    print(bench_report.format_summary(summary))

    report = {"tool": "python -m mla_plugin bench", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": info, "copy_bandwidth": copy, "mma_peak": mma, "contenders": sources,
              "method": {"timing": method, "counting": _COUNTING, "inputs": _INPUTS},
              "options": {k: v for k, v in vars(args).items() if k != "func"},
              "results": rows, "summary": summary}
    _write_outputs(args.out_dir, info["name"], rows, report)
    bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


def _run_grid(shapes, contenders, settings, release_memory) -> list:
    rows = []
    started = time.monotonic()
    print(bench_report.format_header(), flush=True)
    for i, shape in enumerate(shapes, 1):
        _progress(f"[{i}/{len(shapes)}] {shape.label} (page {shape.page_size}), "
                  f"elapsed {time.monotonic() - started:.0f} s")
        row = bench_shape(shape, contenders, settings)
        release_memory()  # each shape allocates its own tensors: give them back
        rows.append(row)
        print(bench_report.format_row(row), flush=True)
    _progress(f"done: {len(shapes)} shapes in {time.monotonic() - started:.0f} s")
    return rows


def _print_preamble(info, copy, mma, sources, method, shapes) -> None:
    peak = (f"{mma['mma_peak_tflops']:.1f} TFLOP/s ({mma['mma_peak_source']})" if mma["mma_peak_tflops"]
            else f"n/a: {mma['mma_peak_source']}; compute columns stay empty")
    print(f"mla_plugin bench on {info['name']} (sm_{info['capability'].replace('.', '')}, "
          f"{info['sm_count']} SMs), torch {info['torch']}, triton {info['triton']}")
    print(f"copy bandwidth: {copy['copy_bw_gbs']:.0f} GB/s ({copy['method']})")
    print(f"mma.sync bf16 peak: {peak}")
    for name in ("ours", "triton", "reference"):
        if name in sources:
            print(f"{name}: {sources[name]}")
    print(f"timing: {method}")
    print(f"{len(shapes)} shapes; speed-up = TRITON_MLA time / ours; GB/s, TFLOP/s and % columns are ours; "
          f"%roof = roofline time (larger of bytes/copy BW and FLOPs/mma peak) / ours")
    print(flush=True)


def _write_outputs(out_dir, device_name, rows, report) -> None:
    stem = bench_report.file_stem(device_name, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    paths = bench_report.output_paths(out_dir, stem)
    bench_report.write_csv(rows, paths["csv"])
    bench_report.write_json(report, paths["json"])
    print(f"csv: {paths['csv']}")
    print(f"json: {paths['json']}")
    _, message = bench_report.write_plot(rows, paths["png"], f"MLA decode vs TRITON_MLA on {device_name}")
    print(message)


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _refuse(message: str) -> int:
    print(f"mla_plugin bench: {message}", file=sys.stderr)
    return 2


_COUNTING = ("FLOPs = sum over (query token, head) rows of 2 * (576 + 512) * tokens attended; "
             "bytes = each request's KV once (context * 576 * element size) + q (bf16) + out (bf16)")
_INPUTS = ("q ~ N(0,1) bf16, KV ~ N(0,1) (FP8: stored / 0.05, kv_scale 0.05), softmax scale 1/sqrt(192), "
           "block table a random permutation of all pages, every request at the full context")
