"""Representative decode launches for compute-sanitizer (scripts/sanitize.sh): both cache dtypes,
split-KV over a ragged batch with padding rows, query_len 2, 128 heads, garbage table tails;
each with the plan's splits, and again with 5 (a few, some of them empty) merged inside a cluster
and by the combine kernel; and skewed batches on length-balanced splits (a long request among
short and empty ones, more splits than the plan's per request).
Small shapes: the sanitizer slows kernels down a hundredfold."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.gpu.cases import Case, make_inputs, run_op, tuning_override  # noqa: E402

CASES = [
    Case(dtype="bf16", heads=16, block_size=16, seq_lens=[700, 0, 33, 1], query_len=2),
    Case(dtype="fp8", heads=16, block_size=64, seq_lens=[700, 0, 33, 1], query_len=2, kv_scale=0.5),
    Case(dtype="bf16", heads=128, block_size=64, seq_lens=[300, 65]),
    Case(dtype="fp8", heads=128, block_size=32, seq_lens=[300, 65], query_len=2),
    Case(dtype="fp16", heads=20, block_size=128, seq_lens=[129, 2]),
]


# The plan's splits through the combine: the grid holds twice them and the kernel balances them.
BALANCED = [
    Case(dtype="fp8", heads=16, block_size=16, seq_lens=[2000, 5, 0, 64, 65, 1], kv_scale=0.5),
    Case(dtype="bf16", heads=20, block_size=64, seq_lens=[1500, 0, 33, 129], query_len=2),
]


def main() -> int:
    for splits, max_cluster, cases in ((None, None, CASES), ("5", None, CASES), ("5", 0, CASES),
                                       (None, 0, BALANCED)):
        if splits:
            os.environ["MLA_PLUGIN_SPLITS"] = splits
        else:
            os.environ.pop("MLA_PLUGIN_SPLITS", None)
        merge = "combine" if max_cluster == 0 else "plan's merge"
        balance = 64 if cases is BALANCED else None  # balanced at these small batches' many splits
        for case in cases:
            with tuning_override(max_cluster_splits=max_cluster, max_balanced_splits=balance):
                out, lse = run_op(case, make_inputs(case))
            torch.cuda.synchronize()
            bad = int(torch.isnan(out.float()).sum())
            print(f"{case} splits {splits or 'plan'}, {merge}: ran, {bad} NaN", flush=True)
            if bad:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
