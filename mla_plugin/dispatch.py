"""CUDA dispatch of mla_decode: picks the kernel configuration and launches it.

Interface used by ops.mla_decode after it has validated every argument:

    launch(q_nope, q_pe, kv_cache, block_table, seq_lens, out, lse, *,
           softmax_scale, kv_scale, q_scale, query_len, causal, max_seq_len=None) -> None

    q_nope      [T, H, 512]  bf16 / fp16, or float8_e4m3fn (then q_pe is a view of the same fp8 tensor)
    q_pe        [T, H, 64]   same dtype as q_nope; both may be strided, last dim contiguous
    kv_cache    [num_blocks, block_size, 576]  bf16 / fp16 / float8_e4m3fn (uint8 already viewed as fp8)
    block_table [B, max_blocks] int32, seq_lens [B] int32, T == B * query_len
    out         [T, H, 512]  bf16 / fp16, written in place
    lse         [T, H]       float32, written in place (natural log)
    kv_scale, q_scale: float, a 1-element float32 CUDA tensor, or None (1.0)

Everything here is host-side arithmetic on shapes: no device synchronisation, and after the
first call on a device no allocation, so a launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from mla_plugin import build, configs
from mla_plugin.geometry import V_DIM

ROWS_PER_CTA_CHOICES = (16, 32)
SM90_RESERVED_SMEM_PER_CTA = 1024  # the driver keeps 1 KiB per CTA on sm_90+
SPLITS_ENV = "MLA_PLUGIN_SPLITS"
ROWS_ENV = "MLA_PLUGIN_ROWS_PER_CTA"

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float8_e4m3fn: "fp8"}
# Widest row tile per cache dtype. 16-bit caches stay at 16 rows: with 32 rows the Q tile and S
# partials leave an 11-panel ring, too shallow to hide latency (H200, B32 H128 ctx4k: 289 us at
# 16 rows vs 399 us at 32). FP8 tiles are half the bytes: 32 rows win there (355 vs 424 us).
MAX_ROWS_PER_CTA = {"bf16": 16, "fp16": 16, "fp8": 32}


def extension():
    """The compiled kernels (built or loaded on first use)."""
    return build.load_extension()


@dataclass(frozen=True)
class DeviceFacts:
    name: str
    sm_count: int
    smem_per_sm: int


_device_facts: dict[int, DeviceFacts] = {}
_workspaces: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def device_facts(index: int) -> DeviceFacts:
    facts = _device_facts.get(index)
    if facts is None:
        props = torch.cuda.get_device_properties(index)
        smem = getattr(props, "shared_memory_per_multiprocessor", 0) or 228 * 1024
        facts = DeviceFacts(props.name, props.multi_processor_count, smem)
        _device_facts[index] = facts
    return facts


@dataclass(frozen=True)
class Plan:
    rows_per_cta: int
    row_tiles: int
    num_splits: int
    target_ctas: int


def ctas_per_sm(facts: DeviceFacts, smem_per_cta: int) -> int:
    return max(1, facts.smem_per_sm // (smem_per_cta + SM90_RESERVED_SMEM_PER_CTA))


def plan_launch(batch: int, rows_per_request: int, facts: DeviceFacts, smem_per_cta_of, tuning: dict,
                max_seq_len: int | None, max_rows_per_cta: int = 32) -> Plan:
    """Rows per CTA and the split count. Splits only when batch x row tiles underfills the GPU,
    and never into splits shorter than min_tokens_per_split (when max_seq_len is known)."""
    rows_per_cta = forced_rows_per_cta() or (
        ROWS_PER_CTA_CHOICES[0] if rows_per_request <= ROWS_PER_CTA_CHOICES[0] else max_rows_per_cta)
    row_tiles = math.ceil(rows_per_request / rows_per_cta)
    ctas = max(1, batch * row_tiles)
    target = math.ceil(tuning["waves"] * facts.sm_count * ctas_per_sm(facts, smem_per_cta_of(rows_per_cta)))
    # floor: a split grid just over one wave leaves a second, mostly idle wave.
    splits = max(1, target // ctas)
    splits = min(splits, int(tuning["max_splits"]))
    if max_seq_len:
        splits = min(splits, max(1, math.ceil(max_seq_len / int(tuning["min_tokens_per_split"]))))
    return Plan(rows_per_cta, row_tiles, max(1, splits), target)


def workspace_rows(facts: DeviceFacts, tuning: dict, min_smem_per_cta: int) -> int:
    """Rows of the split workspace: enough for the largest split grid plan_launch can make
    (ctas * splits <= target when splits > 1), at the widest row tile."""
    max_target = math.ceil(tuning["waves"] * facts.sm_count * ctas_per_sm(facts, min_smem_per_cta))
    return max_target * ROWS_PER_CTA_CHOICES[-1]


def workspace(device: torch.device, facts: DeviceFacts, tuning: dict, min_smem_per_cta: int):
    """Per-device split workspace, allocated on first use and reused (CUDA-graph safe)."""
    ws = _workspaces.get(device.index)
    if ws is None:
        rows = workspace_rows(facts, tuning, min_smem_per_cta)
        ws = (torch.empty(rows, V_DIM, dtype=torch.float32, device=device),
              torch.empty(rows, dtype=torch.float32, device=device))
        _workspaces[device.index] = ws
    return ws


def forced_rows_per_cta() -> int | None:
    """MLA_PLUGIN_ROWS_PER_CTA=16|32 pins the row tiling (tuning sweeps); unset, the plan decides."""
    value = os.environ.get(ROWS_ENV)
    if not value:
        return None
    if value not in {str(r) for r in ROWS_PER_CTA_CHOICES}:
        raise ValueError(f"{ROWS_ENV}: expected one of {ROWS_PER_CTA_CHOICES}, got {value!r}")
    return int(value)


def forced_splits() -> int | None:
    """MLA_PLUGIN_SPLITS=N pins the split count (tuning sweeps); unset, the plan decides."""
    value = os.environ.get(SPLITS_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{SPLITS_ENV}: expected a positive integer, got {value!r}")
    return int(value)


def _scale(value, device: torch.device, name: str):
    """(tensor or None, float) for a scale given as None, a number or a 1-element tensor."""
    if value is None:
        return None, 1.0
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected one element, got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name}: expected a tensor on {device}, got {value.device}")
        # The kernel reads one float32 through the pointer: any shape of one element will do.
        return (value if value.dtype == torch.float32 else value.to(torch.float32)), 1.0
    return None, float(value)


@dataclass(frozen=True)
class LaunchShape:
    """Everything the plan depends on; hashable, so plans are computed once per shape."""
    device_index: int
    kv: str
    q: str
    out: str
    batch: int
    rows_per_request: int
    split_cap: int | None  # ceil(max_seq_len / min_tokens_per_split), or None when unknown
    forced_splits: int | None
    forced_rows: int | None


@functools.lru_cache(maxsize=4096)
def launch_plan(shape: LaunchShape):
    """(rows_per_cta, splits, partial_out, partial_lse) for a shape: splits fitted to the
    device's split workspace, which is allocated here on first need."""
    ext = extension()
    facts = device_facts(shape.device_index)
    tuning = configs.tuning_for(facts.name)

    def smem_of(rows: int) -> int:
        return ext.smem_bytes(shape.kv, shape.q, shape.out, rows)

    max_seq_len = None if shape.split_cap is None else shape.split_cap * int(tuning["min_tokens_per_split"])
    plan = plan_launch(shape.batch, shape.rows_per_request, facts, smem_of, tuning, max_seq_len,
                       MAX_ROWS_PER_CTA[shape.kv])
    splits = shape.forced_splits or plan.num_splits
    if splits == 1:
        return plan.rows_per_cta, 1, None, None
    device = torch.device("cuda", shape.device_index)
    partial_out, partial_lse = workspace(device, facts, tuning, min(smem_of(r) for r in ROWS_PER_CTA_CHOICES))
    capacity_ctas = partial_lse.shape[0] // plan.rows_per_cta
    splits = max(1, min(splits, capacity_ctas // max(1, shape.batch * plan.row_tiles)))
    return plan.rows_per_cta, splits, partial_out, partial_lse


def launch(q_nope, q_pe, kv_cache, block_table, seq_lens, out, lse, *, softmax_scale,
           kv_scale=None, q_scale=None, query_len=1, causal=True, max_seq_len=None) -> None:
    ext = extension()
    device = q_nope.device
    split_cap = None
    if max_seq_len:
        facts = device_facts(device.index)
        split_cap = -(-int(max_seq_len) // int(configs.tuning_for(facts.name)["min_tokens_per_split"]))
    shape = LaunchShape(device.index, _DTYPE_NAMES[kv_cache.dtype], _DTYPE_NAMES[q_nope.dtype],
                        _DTYPE_NAMES[out.dtype], seq_lens.shape[0], query_len * q_nope.shape[1],
                        split_cap, forced_splits(), forced_rows_per_cta())
    rows_per_cta, splits, partial_out, partial_lse = launch_plan(shape)
    kv_scale_t, kv_scale_v = _scale(kv_scale, device, "kv_scale")
    q_scale_t, q_scale_v = _scale(q_scale, device, "q_scale")
    ext.decode(q_nope, q_pe, kv_cache, block_table, seq_lens, out, lse, partial_out, partial_lse,
               float(softmax_scale), kv_scale_t, kv_scale_v, q_scale_t, q_scale_v, int(query_len),
               bool(causal), rows_per_cta, splits)


def mma_sync_peak_tflops(device=None, iterations: int = 2048, repeats: int = 5) -> float:
    """Measured mma.sync m16n8k16 BF16 (fp32 accumulate) throughput of the device, TFLOP/s."""
    ext = extension()
    dev = torch.device("cuda", torch.cuda.current_device() if device is None else torch.device(device).index)
    with torch.cuda.device(dev):
        facts = device_facts(dev.index)
        blocks = facts.sm_count * 8
        sink = torch.empty(blocks * 256, dtype=torch.float32, device=dev)
        ext.mma_peak(sink, blocks, iterations)  # warm-up
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            ext.mma_peak(sink, blocks, iterations)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        flops = blocks * 8 * iterations * 8 * 2 * 16 * 8 * 16
        return flops / sorted(times)[len(times) // 2] / 1e12
