"""python -m mla_plugin bench: time our MLA decode kernel against vLLM's TRITON_MLA and
against the device's own limits, measured in the same run.

    python -m mla_plugin bench --quick                    # a 16-shape smoke run, both modes
    python -m mla_plugin bench                            # the full 320-shape grid, both modes
    python -m mla_plugin bench --batch 1,64 --heads 128 --context 4k,32k --dtype fp8
    python -m mla_plugin bench --mode graph --lengths ragged --batch 8,32,64,128
    python -m mla_plugin bench --sm12x-residency --batch 1,8 --kernel-times

Each shape's inputs are made once; both capture conditions (--mode: eager, the batch's own
max length as the planning hint; graph, max_model_len as vLLM 0.33's full CUDA graphs have
it) run on them, each checked against the fp32 reference and the other contender before it
is timed. Per shape and mode it prints ours / TRITON_MLA in microseconds, the speed-up,
GB/s and TFLOP/s with their % of the measured copy bandwidth and mma.sync peak, both
contenders' errors; then geo-means per mode and dtype, and writes CSV, JSON and (with
matplotlib) a PNG into --out-dir. Progress goes to stderr.
Exit status: 0 all right, 1 some shape wrong or failed, 2 could not run (no CUDA, a
kernel missing, a bad option).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from mla_plugin import geometry
from mla_plugin.bench import grid as bench_grid
from mla_plugin.bench import kernel_times as bench_kernel_times
from mla_plugin.bench import kernels as bench_kernels
from mla_plugin.bench import modes as bench_modes
from mla_plugin.bench import report as bench_report
from mla_plugin.bench import residency as bench_residency
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
    grid.add_argument("--lengths", choices=bench_grid.LENGTHS, default=bench_grid.DEFAULT_LENGTHS,
                      help="uniform: every request at the full context; ragged: each request's length drawn "
                           "uniformly in [query-len, context] from --seed (default uniform)")
    conditions = parser.add_argument_group("capture condition")
    conditions.add_argument("--mode", choices=bench_modes.MODE_CHOICES, default=bench_modes.DEFAULT_MODE,
                            help="eager: both contenders plan from the batch's own max length; graph: both "
                                 "planned for --max-model-len, as vLLM 0.33's full CUDA graphs capture them, "
                                 "replayed on the real lengths; both: each shape in both, on the same tensors "
                                 "(default both)")
    conditions.add_argument("--max-model-len", type=int, default=bench_modes.DEFAULT_MAX_MODEL_LEN,
                            help=f"graph mode's planning length (default {bench_modes.DEFAULT_MAX_MODEL_LEN})")
    conditions.add_argument("--sm12x-residency", action="store_true",
                            help="run our kernel with no more CTAs per SM than SM12x holds (an emulation of "
                                 "residency only: not of clocks, SM count or GDDR7); TRITON_MLA unchanged")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--reps", type=int, default=DEFAULT_REPS,
                        help=f"timed repetitions per kernel and shape, median reported (at least {MIN_REPS}; "
                             f"default {DEFAULT_REPS})")
    timing.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed calls first (default 5)")
    timing.add_argument("--seed", type=int, default=0, help="seed of the random inputs (and ragged lengths)")
    timing.add_argument("--kernel-times", action="store_true",
                        help=f"also profile {bench_kernel_times.DEFAULT_REPLAYS} graph replays of our op "
                             f"(torch.profiler) for its per-kernel device times: decode, combine, their sum")
    contenders = parser.add_argument_group("what runs")
    contenders.add_argument("--triton-path", default=bench_kernels.DEFAULT_TRITON_PATH,
                            help="folder from shared/tools/fetch-triton-mla, used when vLLM is not "
                                 "importable (default .peers/triton_mla)")
    contenders.add_argument("--no-triton", action="store_true", help="time our kernel alone")
    contenders.add_argument("--no-ours", action="store_true",
                            help="time TRITON_MLA alone (to check the instrument before our kernel exists)")
    contenders.add_argument("--ref-max-tokens", type=int, default=DEFAULT_REFERENCE_MAX_TOKENS,
                            help="check both contenders against the fp32 reference where batch x context is at "
                                 f"most this (default {DEFAULT_REFERENCE_MAX_TOKENS} = 128 x 32k, the whole "
                                 "default grid; 0 = never)")
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
    if args.no_ours and args.sm12x_residency:
        raise ValueError("--sm12x-residency changes our kernel only: it needs our kernel (drop --no-ours)")
    if args.no_ours and args.kernel_times:
        raise ValueError("--kernel-times profiles our kernel only: it needs our kernel (drop --no-ours)")
    modes = bench_modes.parse_modes(args.mode)
    shapes = bench_grid.grid_from_options(batch=args.batch, heads=args.heads, context=args.context,
                                          dtype=args.dtype, page_size=args.page_size,
                                          query_len=args.query_len, quick=args.quick, lengths=args.lengths)
    bench_modes.check_max_model_len(args.max_model_len, max(s.context for s in shapes), modes)
    return shapes


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
    started = time.monotonic()
    device = bench_device.current_device()
    info = bench_device.describe_device(device)
    _progress(f"measuring copy bandwidth and mma.sync peak on {info['name']}")
    copy = bench_device.measure_copy_bandwidth(device)
    if args.mma_peak_tflops:
        mma = {"mma_peak_tflops": args.mma_peak_tflops, "mma_peak_source": "given (--mma-peak-tflops)"}
    else:
        mma = bench_device.measure_mma_peak(device)
    flusher = bench_device.L2Flusher(device)
    modes = bench_modes.parse_modes(args.mode)
    profiler = None
    if args.kernel_times:
        replays = bench_kernel_times.DEFAULT_REPLAYS

        def profiler(fn):
            events = bench_device.profile_kernel_events(fn, replays=replays, flush=flusher)
            return bench_kernel_times.breakdown(events, replays)

    settings = RunSettings(
        device=device, sm_count=info["sm_count"], copy_bw_gbs=copy["copy_bw_gbs"],
        mma_peak_tflops=mma["mma_peak_tflops"],
        timer=lambda fn: bench_device.time_us_graph(fn, reps=args.reps, warmup=args.warmup, flush=flusher),
        sync=bench_device.synchronize, free_bytes=lambda: bench_device.free_bytes(device),
        seed=args.seed, reference_max_tokens=args.ref_max_tokens, modes=modes,
        max_model_len=args.max_model_len, sm12x_residency=args.sm12x_residency, kernel_profiler=profiler)
    method = (f"each kernel captured in a CUDA graph (no host launch cost, as in vLLM's decode), "
              f"CUDA events around each replay, L2 flushed ({flusher.nbytes >> 20} MiB zeroed) before "
              f"each, {args.warmup} warm-up, median of {args.reps}; outputs checked before timing and "
              f"again after the timed replays")
    conditions = _conditions(args, modes, info)
    _print_preamble(info, copy, mma, sources, method, shapes, conditions)

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
              "conditions": conditions,
              "method": {"timing": method, "counting": _COUNTING, "inputs": _inputs_text(args.lengths),
                         "modes": {m: bench_modes.describe(m, args.max_model_len) for m in modes},
                         "kernel_times": _KERNEL_TIMES if args.kernel_times else "not measured"},
              "options": {k: v for k, v in vars(args).items() if k != "func"},
              "results": rows, "summary": summary, "elapsed_s": round(time.monotonic() - started, 1)}
    _write_outputs(args.out_dir, info["name"], rows, report, conditions)
    bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


def _run_grid(shapes, contenders, settings, release_memory) -> list:
    rows = []
    started = time.monotonic()
    print(bench_report.format_header(), flush=True)
    for i, shape in enumerate(shapes, 1):
        _progress(f"[{i}/{len(shapes)}] {shape.label} (page {shape.page_size}, {'+'.join(settings.modes)}), "
                  f"elapsed {time.monotonic() - started:.0f} s")
        shape_rows = bench_shape(shape, contenders, settings)
        release_memory()  # each shape allocates its own tensors: give them back
        rows.extend(shape_rows)
        for row in shape_rows:
            print(bench_report.format_row(row), flush=True)
    _progress(f"done: {len(shapes)} shapes x {len(settings.modes)} modes in {time.monotonic() - started:.0f} s")
    return rows


def _conditions(args, modes, info) -> dict:
    """What the run's figures were measured under, for the preamble and the JSON."""
    conditions = {"modes": list(modes), "max_model_len": args.max_model_len if "graph" in modes else None,
                  "lengths": args.lengths, "seed": args.seed, "sm12x_residency": None,
                  "fp8_math": _fp8_math()}
    if args.sm12x_residency:
        conditions["sm12x_residency"] = bench_residency.describe(info.get("smem_per_sm"), sm_count=info["sm_count"],
                                                                 name=info["name"])
    return conditions


def _fp8_math() -> str | None:
    """Our op's FP8-cache math for this run (dispatch.resolve_fp8_math: $MLA_PLUGIN_FP8_MATH or
    its default), or None where this tree's dispatch has no such switch."""
    try:
        from mla_plugin import dispatch
        return dispatch.resolve_fp8_math()
    except Exception:
        return None


def _print_preamble(info, copy, mma, sources, method, shapes, conditions) -> None:
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
    for mode in conditions["modes"]:
        print(f"mode {bench_modes.describe(mode, conditions['max_model_len'])}")
    print(f"lengths: {_lengths_text(conditions['lengths'])}")
    if conditions["fp8_math"]:
        print(f"our FP8-cache math: {conditions['fp8_math']} (MLA_PLUGIN_FP8_MATH or dispatch's default)")
    residency = conditions["sm12x_residency"]
    if residency:
        native = residency["native_ctas_per_sm_at_budget"]
        requested = residency["smem_requested_at_budget"]
        print(f"residency: {residency['statement']} Via {residency['env']}=1 around our calls; this GPU fits "
              f"{native if native is not None else '?'} CTAs of {residency['smem_per_cta_budget']} B per SM natively, "
              f"SM12x {residency['emulated_ctas_per_sm']}"
              + (f", and such a CTA then requests {requested} B." if requested else "."))
        if not residency["dispatch_defines_env"]:
            print(f"residency: WARNING: mla_plugin.dispatch does not define SM12X_RESIDENCY_ENV in this tree; "
                  f"the kernel may ignore {residency['env']}")
    elif bench_residency.stray_setting() is not None:
        print(f"residency: {bench_residency.env_name()}={bench_residency.stray_setting()} in the environment is "
              f"overridden to 0 for our calls (pass --sm12x-residency to emulate SM12x residency)")
    print(f"{len(shapes)} shapes x {len(conditions['modes'])} modes; speed-up = TRITON_MLA time / ours; GB/s, "
          f"TFLOP/s and % columns are ours; %roof = roofline time (larger of bytes/copy BW and FLOPs/mma peak) "
          f"/ ours; err = max abs error against the fp32 reference; comb% = combine kernel's share of our "
          f"step (--kernel-times)")
    print(flush=True)


def _write_outputs(out_dir, device_name, rows, report, conditions) -> None:
    stem = bench_report.file_stem(device_name, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    paths = bench_report.output_paths(out_dir, stem)
    bench_report.write_csv(rows, paths["csv"])
    bench_report.write_json(report, paths["json"])
    print(f"csv: {paths['csv']}")
    print(f"json: {paths['json']}")
    title = (f"MLA decode vs TRITON_MLA on {device_name}: {'+'.join(conditions['modes'])} mode, "
             f"{conditions['lengths']} lengths" + (", SM12x residency emulated" if conditions["sm12x_residency"] else ""))
    _, message = bench_report.write_plot(rows, paths["png"], title)
    print(message)


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _refuse(message: str) -> int:
    print(f"mla_plugin bench: {message}", file=sys.stderr)
    return 2


_COUNTING = (f"FLOPs = sum over (query token, head) rows of 2 * ({geometry.HEAD_DIM} + {geometry.V_DIM}) * tokens "
             f"attended; bytes = each request's KV once (seq_len * {geometry.HEAD_DIM} * element size) + q (bf16) + "
             f"out (bf16); every request at its own seq_len")
_KERNEL_TIMES = (f"our op's CUDA graph replayed {bench_kernel_times.DEFAULT_REPLAYS} times under torch.profiler "
                 f"(L2 flushed before each), after its timing: per-step device time of kernels named *combine* "
                 f"and of the other *decode* kernels, their sum, and the combine's share")


def _lengths_text(lengths: str) -> str:
    if lengths == "ragged":
        return ("ragged: each request's seq_len drawn uniformly in [query_len, context] (random.Random(seed)); "
                "the eager hint is their max")
    return "uniform: every request at the full context"


def _inputs_text(lengths: str) -> str:
    return ("q ~ N(0,1) bf16, KV ~ N(0,1) (FP8: stored / 0.05, kv_scale 0.05), softmax scale 1/sqrt(192), "
            "block table a random permutation of all pages; " + _lengths_text(lengths))
