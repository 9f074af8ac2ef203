"""CUDA graphs of our op captured once and replayed many times, as vLLM replays its decode
steps: two graphs in one process, each with its own shapes, split plan and device, replayed
alternately 100 times with new lengths written into the captured tensors, each replay equal
to eager and to its fp32 reference. The two-device form (one graph per GPU) needs two GPUs
(marker multigpu); the one-device form runs both graphs on one GPU (marker gpu)."""

from __future__ import annotations

import pytest
import torch

from mla_plugin import ops
from mla_plugin.reference import mla_decode_reference

from .cases import SOFTMAX_SCALE, Case, make_inputs

MAX_MODEL_LEN = 131072  # vLLM captures its graphs with max_seq_len = max_model_len
TOLERANCE = {"bf16": 2e-2, "fp8": 2e-2}


class CapturedStep:
    """One decode step of `case` on `device`, captured in a CUDA graph at max_model_len."""

    def __init__(self, case: Case, device: str):
        self.case, self.device = case, torch.device(device)
        with torch.cuda.device(self.device):
            self.inp = make_inputs(case, device=device)
            q = self.inp.q
            self.q = torch.cat(q, dim=-1) if isinstance(q, tuple) else q
            rows = case.batch * case.query_len
            self.out = torch.empty(rows, case.heads, 512, dtype=torch.bfloat16, device=device)
            self.lse = torch.empty(rows, case.heads, dtype=torch.float32, device=device)
            self.step()  # warm-up: build, plan, workspace
            torch.cuda.synchronize(self.device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step()

    def step(self) -> None:
        ops.mla_decode(self.q, self.inp.kv_cache, self.inp.block_table, self.inp.seq_lens,
                       softmax_scale=SOFTMAX_SCALE, kv_scale=self.inp.kv_scale, query_len=self.case.query_len,
                       out=self.out, lse=self.lse, return_lse=True, max_seq_len=MAX_MODEL_LEN)

    def replay_and_check(self, i: int) -> None:
        with torch.cuda.device(self.device):
            # New lengths, never longer than the built ones (slots past them are NaN poison).
            lens = [max(0, s - 41 * i - 3 * b) if s else 0 for b, s in enumerate(self.case.seq_lens)]
            lens = [max(s, self.case.query_len) if s else 0 for s in lens]
            self.inp.seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
            self.graph.replay()
            got, got_lse = self.out.clone(), self.lse.clone()
            self.step()
            assert torch.equal(got, self.out) and torch.equal(got_lse, self.lse), f"replay {i}: differs from eager"
            ref, ref_lse = mla_decode_reference(self.q, self.inp.kv_cache, self.inp.block_table, self.inp.seq_lens,
                                                softmax_scale=SOFTMAX_SCALE, kv_scale=self.inp.kv_scale,
                                                query_len=self.case.query_len)
            assert not torch.isnan(got).any(), f"replay {i}: NaN"
            err = float((got.float() - ref).abs().max())
            assert err <= TOLERANCE[self.case.dtype], f"replay {i} on {self.device}: max abs error {err:.3g}"
            seen = torch.isfinite(ref_lse)
            assert torch.all(got_lse[~seen] == float("-inf")) and torch.all(got[~seen] == 0)
            assert float((got_lse[seen] - ref_lse[seen]).abs().max()) <= 1e-3


def _cases():
    return (Case(dtype="bf16", heads=16, block_size=64, seq_lens=[5000, 70, 0], seed=1),
            Case(dtype="fp8", heads=64, block_size=16, seq_lens=[4200, 33], query_len=2, kv_scale=0.05, seed=2))


def _alternate(steps) -> None:
    for i in range(100):
        for step in steps:
            step.replay_and_check(i)


@pytest.mark.gpu
def test_two_graphs_on_one_device_replayed_alternately():
    a, b = _cases()
    _alternate([CapturedStep(a, "cuda:0"), CapturedStep(b, "cuda:0")])


@pytest.mark.multigpu
def test_one_graph_per_device_replayed_alternately():
    a, b = _cases()
    torch.cuda.set_device(0)  # the second graph's device is not the current one
    _alternate([CapturedStep(a, "cuda:0"), CapturedStep(b, "cuda:1")])
