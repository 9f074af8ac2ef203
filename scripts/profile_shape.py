"""One decode shape, run a few times: the target for Nsight Compute (scripts/gpu_check.sh or by hand):
  ncu --clock-control none -k regex:mla_decode_kernel --launch-skip 2 --launch-count 1 \\
      python3 scripts/profile_shape.py 64x16x4k bf16 [--hint 131072]"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from scripts.ab_timing import inputs, parse  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("dtype")
    ap.add_argument("--hint", type=int, default=None)
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    from mla_plugin import ops

    b, h, ctx = parse(args.shape)
    q, kv, table, lens, scale = inputs(b, h, ctx, args.dtype)
    for _ in range(args.runs):
        ops.mla_decode(q, kv, table, lens, softmax_scale=192 ** -0.5, kv_scale=scale, max_seq_len=args.hint or ctx)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
