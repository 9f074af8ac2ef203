"""A/B timing of our op as vLLM runs it: captured in a CUDA graph with the plan made for the
batch's own length (eager hint) or for max_model_len (graph hint), replayed with the L2 flushed,
median of REPS; optionally the per-kernel split of the step (torch.profiler). Imports only torch
and the mla_plugin found on sys.path, so the same script times another checkout
(PYTHONPATH=other/tree python3 scripts/ab_timing.py ...).

  python3 scripts/ab_timing.py --tag new --shapes small [--kernels] > out.csv

Another build or launch mode is timed by the environment the script starts in, e.g.
MLA_PLUGIN_NVCC_DEFINES=... (a build under its own cache key) or MLA_PLUGIN_SM12X_RESIDENCY=1.
"""

import argparse
import os
import statistics
import sys

import torch

SHAPES = {
    "small": ["1x16x1k", "1x16x4k", "1x16x32k", "8x16x4k", "1x128x4k", "1x16x1"],
    "large": ["32x16x4k", "64x16x4k", "128x16x4k", "32x32x4k", "64x32x4k", "64x64x4k", "64x128x4k", "32x16x16k"],
}


def parse(s):
    b, h, c = s.split("x")
    c = int(c[:-1]) * 1024 if c.endswith("k") else int(c)
    return int(b), int(h), c


def inputs(b, h, ctx, dtype, page=64, seed=0, ragged=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    pages = -(-ctx // page)
    kv32 = torch.randn(b * pages, page, 576, generator=g, device="cuda")
    kv = (kv32 / 0.05).to(torch.float8_e4m3fn) if dtype == "fp8" else kv32.to(torch.bfloat16)
    del kv32
    q = torch.randn(b, h, 576, generator=g, device="cuda").to(torch.bfloat16)
    table = torch.randperm(b * pages, generator=g, device="cuda").to(torch.int32).view(b, pages)
    if ragged:  # the bench's draw: each length uniform in [1, ctx] from random.Random(seed)
        from types import SimpleNamespace

        from mla_plugin.bench.inputs import request_lengths

        drawn = request_lengths(SimpleNamespace(lengths="ragged", batch=b, context=ctx, query_len=1), seed)
        lens = torch.tensor(drawn, dtype=torch.int32, device="cuda")
    else:
        lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
    scale = torch.tensor([0.05], device="cuda") if dtype == "fp8" else None
    return q, kv, table, lens, scale


def time_graph(fn, reps, flush):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        flush.zero_()
        graph.replay()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        graph.replay()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)), graph


def kernel_split(graph, flush, reps=10):
    """{kernel kind: mean device us per replay} from torch.profiler over graph replays."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            flush.zero_()
            graph.replay()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.events():
        name = ev.name
        kind = "combine" if "combine" in name else ("decode" if "decode" in name else None)
        if kind:
            t = getattr(ev, "device_time", None) or getattr(ev, "cuda_time", 0.0)
            out[kind] = out.get(kind, 0.0) + t / reps
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--shapes", default="small")
    ap.add_argument("--dtypes", default="bf16,fp8")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--modes", default="eager,graph")
    ap.add_argument("--header", action="store_true")
    ap.add_argument("--page", type=int, default=64, help="block size of the paged cache")
    ap.add_argument("--lengths", choices=("uniform", "ragged"), default="uniform",
                    help="uniform: every request at the context; ragged: the bench's draw in [1, context]")
    ap.add_argument("--tuning", default="", help="override tuning keys, e.g. min_tokens_per_split=32,max_splits=256")
    args = ap.parse_args()
    from mla_plugin import configs, ops

    if args.tuning:
        overrides = {k: float(v) if k == "waves" else int(v) for k, v in (kv.split("=") for kv in args.tuning.split(","))}
        original = configs.tuning_for
        configs.tuning_for = lambda name: {**original(name), **overrides}

    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    shapes = [s for group in args.shapes.split(",") for s in SHAPES.get(group, [group])]
    if args.header:
        print("tag,shape,dtype,mode,us,decode_us,combine_us")
    for s in shapes:
        b, h, ctx = parse(s)
        for dtype in args.dtypes.split(","):
            q, kv, table, lens, scale = inputs(b, h, ctx, dtype, page=args.page, ragged=args.lengths == "ragged")
            out = torch.empty(b, h, 512, dtype=torch.bfloat16, device="cuda")
            lse = torch.empty(b, h, dtype=torch.float32, device="cuda")
            for mode in args.modes.split(","):
                hint = int(lens.max()) if mode == "eager" else 131072
                fn = lambda: ops.mla_decode(q, kv, table, lens, softmax_scale=192 ** -0.5, kv_scale=scale,
                                            out=out, lse=lse, max_seq_len=hint)
                try:
                    us, graph = time_graph(fn, args.reps, flush)
                    split = kernel_split(graph, flush) if args.kernels else {}
                except Exception as exc:
                    print(f"{args.tag},{s},{dtype},{mode},ERROR {type(exc).__name__}: {str(exc)[:200]},,", flush=True)
                    continue
                print(f"{args.tag},{s},{dtype},{mode},{us:.1f},{split.get('decode', 0):.1f},{split.get('combine', 0):.1f}",
                      flush=True)
            del q, kv, table, lens
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
