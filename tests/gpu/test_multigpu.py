"""Nothing assumes device 0 (FlashInfer PR 2689 had a set-up that asked device 0): tensors on
either GPU whatever the current device, two processes decoding at once on their own GPU with
DeepSeek-V3 TP=2 shapes, and doctor listing every GPU. Marker multigpu: skipped below 2 GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from .cases import Case, assert_close, make_inputs, measure, run_op

pytestmark = pytest.mark.multigpu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("current,data", [(0, 1), (1, 0)])
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_tensors_on_the_other_gpu(current, data, dtype, error_log):
    torch.cuda.set_device(current)
    try:
        # Split-KV (workspace), both row tilings and the tensor map all live on `data`.
        case = Case(dtype=dtype, heads=64 if dtype == "fp8" else 16, block_size=64,
                    seq_lens=[3000, 17, 0], query_len=2, seed=data)
        inp = make_inputs(case, device=f"cuda:{data}")
        out, lse = run_op(case, inp)  # our op, with the other GPU current
        assert out.device == torch.device("cuda", data) and torch.cuda.current_device() == current
        with torch.cuda.device(data):  # the fp32 reference, on the data's own device
            err = measure(case, inp, out, lse)
        error_log(case, err)
        assert_close(case, err)
    finally:
        torch.cuda.set_device(0)


def _worker(rank: int, dtype: str, queue) -> None:
    # One TP=2 rank of DeepSeek-V3: 128 heads / 2 = 64 per GPU.
    torch.cuda.set_device(rank)
    sys.path.insert(0, REPO)
    from tests.gpu.cases import Case, make_inputs, measure, run_op

    case = Case(dtype=dtype, heads=64, block_size=64, seq_lens=[4096, 1000, 33, 0] * 4, seed=10 + rank)
    inp = make_inputs(case, device=f"cuda:{rank}")
    results = []
    for _ in range(20):  # overlap with the other rank
        results.append(run_op(case, inp))
    torch.cuda.synchronize()
    out, lse = results[-1]
    err = measure(case, inp, out, lse)
    same = all(torch.equal(o, out) for o, _ in results)
    queue.put((rank, dtype, err.problems(), same, str(out.device)))


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_two_processes_one_gpu_each_tp2_shapes(dtype):
    import torch.multiprocessing as mp

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast (shared hosts)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rank, dtype, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, dt, problems, same, device in sorted(results):
        assert device == f"cuda:{rank}"
        assert same, f"rank {rank} {dt}: repeated launches differ"
        assert not problems, f"rank {rank} {dt}: " + "; ".join(problems)


def test_doctor_lists_every_gpu():
    env = dict(os.environ, MLA_PLUGIN_ALLOW_SM90="1")
    res = subprocess.run([sys.executable, "-m", "mla_plugin", "doctor", "--json"], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=300)
    report = json.loads(res.stdout)
    gpus = report.get("gpus") or report.get("facts", {}).get("gpus")
    assert gpus is not None, res.stdout[:2000]
    assert len(gpus) == torch.cuda.device_count() >= 2
