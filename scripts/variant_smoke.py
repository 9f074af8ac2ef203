"""Every compiled kernel variant on a few hard cases against the fp32 reference, plus CUDA-graph
replays captured at max_model_len: one table, for a GPU session's first look (scripts/gpu_check.sh
runs the real suite). Usage: python3 scripts/variant_smoke.py"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mla_plugin import dispatch, kernel_variants, ops  # noqa: E402
from mla_plugin.reference import mla_decode_reference  # noqa: E402
from tests.gpu.cases import SOFTMAX_SCALE, Case, emulate_kernel_q, make_inputs  # noqa: E402

TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}


def q_for(variant, inp, case):
    """q in the variant's dtype, and the q the reference multiplies."""
    q = inp.q if not isinstance(inp.q, tuple) else torch.cat(inp.q, dim=-1)
    if variant.q == "fp8":
        return inp.q, inp.q_scale, inp.q_for_reference
    q16 = q.to(TORCH[variant.q])
    ref = emulate_kernel_q(q16) if variant.mma == "fp8" else q16.float()
    return q16, None, ref


def run_case(variant, case, splits=None, max_seq_len=None):
    os.environ[dispatch.ROWS_ENV] = str(variant.rows)
    os.environ[dispatch.FP8_MATH_ENV] = "e4m3" if variant.mma == "fp8" else "fp16"
    if splits:
        os.environ[dispatch.SPLITS_ENV] = str(splits)
    else:
        os.environ.pop(dispatch.SPLITS_ENV, None)
    inp = make_inputs(case)
    q, q_scale, q_ref = q_for(variant, inp, case)
    out = torch.full((q_ref.shape[0], case.heads, 512), float("nan"), dtype=TORCH[variant.out], device="cuda")
    lse = torch.full((q_ref.shape[0], case.heads), float("nan"), dtype=torch.float32, device="cuda")
    ops.mla_decode(q, inp.kv_cache, inp.block_table, inp.seq_lens, softmax_scale=SOFTMAX_SCALE,
                   kv_scale=inp.kv_scale, q_scale=q_scale, query_len=case.query_len, causal=case.causal,
                   out=out, lse=lse, max_seq_len=max_seq_len)
    ref, ref_lse = mla_decode_reference(q_ref, inp.kv_cache, inp.block_table, inp.seq_lens,
                                        softmax_scale=SOFTMAX_SCALE, kv_scale=inp.kv_scale,
                                        query_len=case.query_len, causal=case.causal)
    o = out.float()
    d = (o - ref).abs()
    seen = torch.isfinite(ref_lse)
    rel = (d.sum(-1) / ref.abs().sum(-1).clamp_min(1e-6))[seen]
    lse_err = (lse[seen] - ref_lse[seen]).abs()
    empty_ok = bool(torch.all(o[~seen] == 0)) and bool(torch.all(lse[~seen] == float("-inf")))
    return dict(max_abs=float(d.max()), mean_rel=float(rel.mean()) if rel.numel() else 0.0,
                lse=float(lse_err.max()) if lse_err.numel() else 0.0,
                nan=int(torch.isnan(o).sum() + torch.isnan(lse).sum()), empty_ok=empty_ok)


CASES = [
    Case(dtype="x", heads=16, block_size=64, seq_lens=[1, 65, 1000, 0], query_len=1),
    Case(dtype="x", heads=20, block_size=16, seq_lens=[47, 2049, 0], query_len=2),
    Case(dtype="x", heads=128, block_size=64, seq_lens=[300, 5], query_len=1),
    Case(dtype="x", heads=16, block_size=32, seq_lens=[7000], query_len=1),
]


def main() -> int:
    bad = 0
    start = time.time()
    print(f"{'variant':48s} {'case':34s} {'splits':>6s} {'max_abs':>9s} {'mean_rel':>9s} {'lse':>8s} nan empty")
    for v in kernel_variants.variants():
        for base in CASES:
            case = Case(**{**base.__dict__, "dtype": v.kv, "q_fp8": v.q == "fp8",
                           "kv_scale": 0.05 if v.kv == "fp8" else 1.0})
            for splits in (None, 1, 5):
                try:
                    r = run_case(v, case, splits)
                except Exception as exc:  # report and go on
                    print(f"{str(v):48s} {str(case)[:34]:34s} {str(splits):>6s} ERROR {type(exc).__name__}: {exc}")
                    bad += 1
                    continue
                tol = 0.1 if v.mma == "fp8" else (3e-2 if v.kv == "bf16" else 1e-2)
                ok = r["nan"] == 0 and r["empty_ok"] and r["max_abs"] <= tol and r["lse"] < 1e-3
                bad += not ok
                print(f"{str(v):48s} {str(case)[:34]:34s} {str(splits):>6s} {r['max_abs']:9.2e} {r['mean_rel']:9.2e} "
                      f"{r['lse']:8.1e} {r['nan']:3d} {r['empty_ok']!s:5s} {'' if ok else '  <-- BAD'}", flush=True)
    # graph captured at max_model_len, replayed with shorter and changing lengths
    for kv in ("bf16", "fp8"):
        os.environ.pop(dispatch.ROWS_ENV, None)
        os.environ.pop(dispatch.SPLITS_ENV, None)
        os.environ.pop(dispatch.FP8_MATH_ENV, None)
        case = Case(dtype=kv, heads=16, block_size=64, seq_lens=[3000, 70, 0, 1], query_len=1,
                    kv_scale=0.05 if kv == "fp8" else 1.0)
        inp = make_inputs(case)
        q = inp.q
        out = torch.empty(4, 16, 512, dtype=torch.bfloat16, device="cuda")
        lse = torch.empty(4, 16, dtype=torch.float32, device="cuda")

        def step(hint):
            ops.mla_decode(q, inp.kv_cache, inp.block_table, inp.seq_lens, softmax_scale=SOFTMAX_SCALE,
                           kv_scale=inp.kv_scale, out=out, lse=lse, max_seq_len=hint)
        step(131072)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step(131072)
        worst = 0.0
        mism = 0
        for i in range(50):
            inp.seq_lens.copy_(torch.tensor([3000 - 53 * i, 70 - i, 0, 1 + i % 3], dtype=torch.int32))
            g.replay()
            go, gl = out.clone(), lse.clone()
            step(131072)
            mism += int(not (torch.equal(go, out) and torch.equal(gl, lse)))
            ref, _ = mla_decode_reference(q if not isinstance(q, tuple) else torch.cat(q, -1), inp.kv_cache,
                                          inp.block_table, inp.seq_lens, softmax_scale=SOFTMAX_SCALE,
                                          kv_scale=inp.kv_scale)
            worst = max(worst, float((go.float() - ref).abs().max()))
        ok = mism == 0 and worst < 3e-2
        bad += not ok
        print(f"graph@131072 {kv}: 50 replays, {mism} differ from eager, worst max_abs vs reference {worst:.2e}"
              f"{'' if ok else '  <-- BAD'}", flush=True)
    print(f"variant_smoke: {bad} bad, {time.time() - start:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
