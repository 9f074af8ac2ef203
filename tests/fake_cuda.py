"""Drive mla_decode's CUDA branch on a machine without a GPU, down to the compiled extension.

What is real: mla_decode, its argument checks, dispatch.launch, the launch plan
(dispatch.launch_plan / plan_launch with the H200 tuning table), the variant lookup in
csrc/variants.def. What is faked, and why it has to be:
  - the tensors' device: FakeCuda is a CPU tensor whose `device` says cuda:0 (the lowest level
    at which Python code can be told "this is a CUDA tensor"; CPU-only torch cannot make one),
    so every check and branch that asks `.device` / `.is_cuda` takes the CUDA path;
  - dispatch.extension(): a FakeExtension (the compiled boundary) whose decode() records its
    arguments and then raises, does nothing, or runs the emulated kernel
    (tests/gpu/emulate.py) into the given out / lse;
  - the device facts and the split workspace: dispatch's own per-device caches, filled with
    an H200's numbers and CPU (FakeCuda) buffers, since there is no device to ask;
  - allocations on the CUDA device (the op's out / lse, the aligned copy of an fp8 q): made
    on the CPU as FakeCuda by a TorchFunctionMode around the call.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

from mla_plugin import configs, dispatch

FP8 = torch.float8_e4m3fn
H200 = dispatch.DeviceFacts("NVIDIA H200", sm_count=132, smem_per_sm=233472)
ELEM = {torch.bfloat16: "bf16", torch.float16: "fp16", FP8: "fp8"}


class FakeCuda(torch.Tensor):
    """A CPU tensor that reports device cuda:0 (results of torch ops on it stay FakeCuda)."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    @property
    def is_cuda(self):
        return True


class CudaAllocationsOnCpu(TorchFunctionMode):
    """While active, a torch call asked to allocate on a CUDA device (torch.empty(...,
    device=q.device) in the op) allocates on the CPU and returns FakeCuda."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs["device"] = "cpu"
            result = func(*args, **kwargs)
            return result.as_subclass(FakeCuda) if isinstance(result, torch.Tensor) else result
        return func(*args, **kwargs)


def fake(x):
    if isinstance(x, torch.Tensor):
        return x.as_subclass(FakeCuda)
    if isinstance(x, (tuple, list)):
        return type(x)(fake(t) for t in x)
    return x


def real(x):
    if isinstance(x, torch.Tensor):
        return x.as_subclass(torch.Tensor)
    if isinstance(x, (tuple, list)):
        return type(x)(real(t) for t in x)
    return x


class FakeExtension:
    """The compiled extension's surface dispatch uses. decode(*args) is recorded in `calls`,
    then handed to `kernel` (None: do nothing)."""

    SMEM = 90 * 1024
    CLUSTERS = 0  # max_active_clusters: no cluster merge unless a test sets it

    def __init__(self, kernel=None):
        self.kernel = kernel
        self.calls: list[tuple] = []

    def smem_bytes(self, kv, q, out, mma, rows):
        return self.SMEM

    def tokens_per_tile(self, kv, q, out, mma, rows):
        return 64 if kv == "fp8" else 32

    def max_active_clusters(self, kv, q, out, mma, rows, splits, smem, device):
        return self.CLUSTERS

    def decode(self, *args):
        self.calls.append(args)
        if self.kernel is not None:
            self.kernel(*args)


DECODE_ARGS = ("q_nope", "q_pe", "kv_cache", "block_table", "seq_lens", "out", "lse", "partial_out",
               "partial_lse", "softmax_scale", "kv_scale_t", "kv_scale_v", "q_scale_t", "q_scale_v",
               "query_len", "causal", "mma", "rows", "num_splits", "min_tiles_per_split", "split_budget", "cluster_merge",
               "smem_bytes")


def named(call: tuple) -> dict:
    """One recorded decode call as {argument name: value} (dispatch.launch's order)."""
    assert len(call) == len(DECODE_ARGS), f"dispatch.launch passes {len(call)} arguments to decode"
    return dict(zip(DECODE_ARGS, call))


@contextlib.contextmanager
def installed(monkeypatch, ext: FakeExtension, facts: dispatch.DeviceFacts = H200):
    """dispatch talks to `ext` on a fake cuda:0 with `facts`; plans made meanwhile are dropped."""
    monkeypatch.setattr(dispatch, "extension", lambda: ext)
    monkeypatch.setitem(dispatch._device_facts, 0, facts)
    rows = dispatch.workspace_rows(facts, configs.tuning_for(facts.name))
    monkeypatch.setitem(dispatch._workspaces, 0, (fake(torch.empty(rows, 512)), fake(torch.empty(rows))))
    dispatch.launch_plan.cache_clear()
    try:
        yield ext
    finally:
        dispatch.launch_plan.cache_clear()


def install_globally(ext: FakeExtension, facts: dispatch.DeviceFacts = H200):
    """installed() for a whole pytest session (the emulated-GPU mode of tests/gpu/conftest.py):
    returns the function that undoes it."""
    saved = (dispatch.extension, dispatch._device_facts.get(0), dispatch._workspaces.get(0))
    dispatch.extension = lambda: ext
    dispatch._device_facts[0] = facts
    rows = dispatch.workspace_rows(facts, configs.tuning_for(facts.name))
    dispatch._workspaces[0] = (fake(torch.empty(rows, 512)), fake(torch.empty(rows)))
    dispatch.launch_plan.cache_clear()

    def undo():
        dispatch.extension = saved[0]
        for cache, value in ((dispatch._device_facts, saved[1]), (dispatch._workspaces, saved[2])):
            if value is None:
                cache.pop(0, None)
            else:
                cache[0] = value
        dispatch.launch_plan.cache_clear()

    return undo


MUTATIONS = ("p_drop_bits", "p_fewer_bits", "out_scale_ulps")


def parse_mutation(spec: str) -> dict:
    """"1" or "honest": no mutation; "p_drop_bits=1,out_scale_ulps=2": emulate.emulated_decode's
    mutation arguments."""
    if spec in ("1", "honest"):
        return {}
    mutation = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name not in MUTATIONS or not value.isdigit():
            raise ValueError(f"emulated-GPU mutation {item!r}: expected one of {MUTATIONS}=N")
        mutation[name] = int(value)
    return mutation


# The kernel's mutation macros (scripts/mutation_check.sh) and the emulation's equivalents.
KERNEL_MUTATIONS = {"MLA_MUTATE_P_DROP_BITS": "p_drop_bits", "MLA_MUTATE_OUT_SCALE_ULPS": "out_scale_ulps"}


def mutation_from_defines(defines: str) -> dict:
    """The emulated mutation a build with these $MLA_PLUGIN_NVCC_DEFINES would have."""
    mutation = {}
    for item in defines.replace(",", " ").split():
        name, _, value = item.partition("=")
        if name in KERNEL_MUTATIONS:
            mutation[KERNEL_MUTATIONS[name]] = int(value or 1)
    return mutation


def call_as_cuda(op, q, kv_cache, block_table, seq_lens, **kwargs):
    """op(...) with every tensor argument FakeCuda and CUDA allocations made on the CPU
    (CudaAllocationsOnCpu). Results come back as plain CPU tensors."""
    kwargs = {k: fake(v) for k, v in kwargs.items()}
    with CudaAllocationsOnCpu():
        result = op(fake(q), fake(kv_cache), fake(block_table), fake(seq_lens), **kwargs)
    return real(result)


def emulated_kernel(**mutation):
    """A FakeExtension kernel: the emulated arithmetic of the variant dispatch chose (its mma
    says which FP8 path), written into out / lse. `mutation`: emulate.emulated_decode's
    p_drop_bits / p_fewer_bits / out_scale_ulps."""
    from tests.gpu import bounds, emulate
    from tests.gpu.cases import emulate_kernel_q

    def run(*args):
        a = {k: real(v) for k, v in named(args).items()}
        q16 = torch.cat([a["q_nope"], a["q_pe"]], -1)
        kv_scale = float(a["kv_scale_t"]) if a["kv_scale_t"] is not None else a["kv_scale_v"]
        q_scale = float(a["q_scale_t"]) if a["q_scale_t"] is not None else a["q_scale_v"]
        if q16.dtype == FP8:
            q = q16.to(torch.float32) * q_scale
        elif a["mma"] == "fp8":
            q = emulate_kernel_q(q16)
        else:
            q = q16.to(torch.float32)
        kv = ELEM[a["kv_cache"].dtype]
        fp8_math = "e4m3" if a["mma"] == "fp8" else "fp16"
        arith = bounds.arith_for(kv, ELEM[a["out"].dtype], fp8_math if kv == "fp8" else None)
        out, lse = emulate.emulated_decode(
            q, a["kv_cache"], a["block_table"], a["seq_lens"], softmax_scale=a["softmax_scale"],
            kv_scale=kv_scale if kv == "fp8" else None, query_len=a["query_len"], causal=a["causal"],
            arith=arith, tile=64 if kv == "fp8" else 32, **mutation)
        a["out"].copy_(out)
        a["lse"].copy_(lse)

    return run
