"""`python -m mla_plugin tune`: regenerate the split-KV tuning table of the current GPU.

For each shape of a small grid it times the op at every split count in SPLIT_CANDIDATES
(MLA_PLUGIN_SPLITS pins the count; CUDA-graph replays, L2 flushed, median), then picks the
table values (waves, min_tokens_per_split) whose plan (dispatch.plan_launch) gives the lowest
geo-mean time over the grid, and writes configs/tuning-style YAML. The choice is pure
arithmetic on the timings (choose_tuning), tested without a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import statistics
import sys
import time

from mla_plugin import configs, dispatch, kernel_variants

SPLIT_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WAVES_CANDIDATES = (0.5, 1.0, 1.5, 2.0)
MIN_TOKENS_CANDIDATES = (32, 64, 128, 256, 512, 1024)
MAX_SPLITS = 256
TUNED_KEYS = ("waves", "max_splits", "min_tokens_per_split")  # the rest of a table is written as DEFAULTS has it


def predicted_time(times: dict[int, float], splits: int) -> float:
    """The measured time at `splits`, or at the nearest measured split count."""
    nearest = min(times, key=lambda s: (abs(math.log2(s) - math.log2(splits)), s))
    return times[nearest]


def choose_tuning(measured: dict[tuple, dict[int, float]], facts: dispatch.DeviceFacts, smem_of) -> dict:
    """measured[(batch, heads, context, dtype)] = {splits: us}. Returns the tuning dict (waves,
    max_splits, min_tokens_per_split) minimising the geo-mean predicted time."""
    best = None
    for waves, min_tokens in itertools.product(WAVES_CANDIDATES, MIN_TOKENS_CANDIDATES):
        tuning = {**configs.DEFAULTS, "waves": waves, "max_splits": MAX_SPLITS, "min_tokens_per_split": min_tokens}
        logs = []
        for (batch, heads, context, dtype), times in measured.items():
            plan = dispatch.plan_launch(batch, heads, facts, lambda rows: smem_of(dtype, rows), tuning, context)
            logs.append(math.log(predicted_time(times, plan.num_splits)))
        score = sum(logs) / len(logs)
        if best is None or score < best[0] - 1e-12:
            best = (score, tuning)
    return {**best[1], "geomean_us": math.exp(best[0])}


def table_yaml(device_name: str, tuning: dict, shapes: list[tuple]) -> str:
    grid = ", ".join(f"B{b} H{h} {c // 1024}k {d}" for b, h, c, d in shapes)
    return (f"# {device_name}: written by `python -m mla_plugin tune` on {time.strftime('%Y-%m-%d')}\n"
            f"# over {grid}; predicted geo-mean {tuning['geomean_us']:.1f} us.\n"
            f"name: {device_name}\n"
            f"match: [\"{device_name.replace('NVIDIA ', '')}\"]\n"
            f"waves: {tuning['waves']}\n"
            f"max_splits: {tuning['max_splits']}\n"
            f"min_tokens_per_split: {tuning['min_tokens_per_split']}\n"
            + "".join(f"{key}: {tuning.get(key, default)}\n" for key, default in configs.DEFAULTS.items()
                      if key not in TUNED_KEYS))


def default_output(device_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower().replace("nvidia", "")).strip("_")
    return str(configs.tuning_dir() / f"{slug}.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", default="1,8,32,64,128", help="batches (default 1,8,32,64,128)")
    parser.add_argument("--heads", default="16,32", help="heads (default 16,32: the split-sensitive ones)")
    parser.add_argument("--context", default="1k,4k,16k", help="contexts (default 1k,4k,16k)")
    parser.add_argument("--dtype", default="bf16", help="cache dtypes (default bf16)")
    parser.add_argument("--reps", type=int, default=20, help="timed replays per point (default 20)")
    parser.add_argument("--out", default=None, help="YAML to write (default configs/tuning/<gpu>.yaml)")


def main(args) -> int:
    import torch

    from mla_plugin import ops
    from mla_plugin.bench import device as bench_device
    from mla_plugin.bench import grid as bench_grid
    from mla_plugin.bench import inputs as bench_inputs
    from mla_plugin.bench import kernels as bench_kernels

    if not torch.cuda.is_available():
        print("mla_plugin tune: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    facts = dispatch.device_facts(device.index)
    ext = dispatch.extension()
    shapes = bench_grid.build_grid(bench_grid.parse_int_list(args.batch, "--batch"),
                                   bench_grid.parse_int_list(args.heads, "--heads"),
                                   bench_grid.parse_context_list(args.context),
                                   bench_grid.parse_dtype_list(args.dtype))
    flush = bench_device.L2Flusher(device)
    measured, start = {}, time.time()
    for i, shape in enumerate(shapes, 1):
        inputs = bench_inputs.make_inputs(shape, device)
        call = bench_kernels.prepare_ours(ops.mla_decode, inputs)
        times = {}
        for splits in SPLIT_CANDIDATES:
            os.environ[dispatch.SPLITS_ENV] = str(splits)
            dispatch.launch_plan.cache_clear()
            times[splits] = statistics.median(
                bench_device.time_us_graph(call.run, reps=args.reps, warmup=2, flush=flush))
        os.environ.pop(dispatch.SPLITS_ENV, None)
        dispatch.launch_plan.cache_clear()
        measured[(shape.batch, shape.heads, shape.context, shape.dtype)] = times
        best = min(times, key=times.get)
        print(f"[tune] {i}/{len(shapes)} B{shape.batch} H{shape.heads} {shape.context} {shape.dtype}: "
              f"best {best} splits ({times[best]:.1f} us), {time.time() - start:.0f} s", file=sys.stderr)
        del inputs, call
        torch.cuda.empty_cache()
    tuning = choose_tuning(
        measured, facts,
        lambda dtype, rows: ext.smem_bytes(dtype, "bf16", "bf16", kernel_variants.mma_for(dtype, dispatch.resolve_fp8_math()), rows))
    out = args.out or default_output(facts.name)
    with open(out, "w") as f:
        f.write(table_yaml(facts.name, tuning, list(measured)))
    print(f"{out}: waves {tuning['waves']}, min_tokens_per_split {tuning['min_tokens_per_split']}")
    return 0
