"""CUDA dispatch of mla_decode: picks the kernel configuration and launches it.

Interface used by ops.mla_decode after it has validated every argument:

    launch(q_nope, q_pe, kv_cache, block_table, seq_lens, out, lse, *,
           softmax_scale, kv_scale, q_scale, query_len, causal, max_seq_len=None,
           fp8_math=None) -> None

    q_nope      [T, H, 512]  bf16 / fp16, or float8_e4m3fn (then q_pe is a view of the same fp8 tensor)
    q_pe        [T, H, 64]   same dtype as q_nope; both may be strided, last dim contiguous
    kv_cache    [num_blocks, block_size, 576]  bf16 / fp16 / float8_e4m3fn (uint8 already viewed as fp8)
    block_table [B, max_blocks] int32, seq_lens [B] int32, T == B * query_len
    out         [T, H, 512]  bf16 / fp16, written in place
    lse         [T, H]       float32, written in place (natural log)
    kv_scale, q_scale: float, a 1-element float32 CUDA tensor, or None (1.0)
    fp8_math    "fp16" | "e4m3" | None (then $MLA_PLUGIN_FP8_MATH, default "fp16"); FP8 caches only

Everything here is host-side arithmetic on shapes: no device synchronisation, and after the
first call on a device no allocation, so a launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from mla_plugin import build, configs, kernel_variants
from mla_plugin.geometry import MAX_KV_SPLITS, SM12X_SMEM_PER_SM, SMEM_RESERVED_PER_CTA, V_DIM
from mla_plugin.kernel_variants import DEFAULT_FP8_MATH, FP8_MATH_MMA, Variant

SM90_RESERVED_SMEM_PER_CTA = SMEM_RESERVED_PER_CTA  # the driver keeps 1 KiB per CTA on sm_90+
SPLITS_ENV = "MLA_PLUGIN_SPLITS"
ROWS_ENV = "MLA_PLUGIN_ROWS_PER_CTA"
FP8_MATH_ENV = "MLA_PLUGIN_FP8_MATH"
SM12X_RESIDENCY_ENV = "MLA_PLUGIN_SM12X_RESIDENCY"

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float8_e4m3fn: "fp8"}
ROWS_PER_CTA_CHOICES = tuple(sorted({v.rows for v in kernel_variants.variants()}))

# Every variant a launch plan has chosen in this process (the GPU suite checks it ran them all).
_launched: set[Variant] = set()


def launched_variants() -> frozenset[Variant]:
    return frozenset(_launched)


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


# Registers: a 16-row CTA's 160 threads at <= 168 registers (config.cuh, MAX_REGISTERS) fit an SM's
# 64K twice, never three times, even where shared memory would hold more (the 48 KiB FP8 16-row CTA
# of the SM12x pair-ring build, csrc/README.md).
MAX_CTAS_PER_SM = 2


def ctas_per_sm(facts: DeviceFacts, smem_per_cta: int) -> int:
    return max(1, min(MAX_CTAS_PER_SM, facts.smem_per_sm // (smem_per_cta + SM90_RESERVED_SMEM_PER_CTA)))


def sm12x_facts(facts: DeviceFacts) -> DeviceFacts:
    """facts with an SM12x SM's shared memory (100 KiB): the residency that the emulation plans for."""
    return DeviceFacts(facts.name, facts.sm_count, SM12X_SMEM_PER_SM)


def plan_launch(batch: int, rows_per_request: int, facts: DeviceFacts, smem_per_cta_of, tuning: dict,
                max_seq_len: int | None, sm12x_residency: bool = False) -> Plan:
    """Rows per CTA and the split count. Splits only when batch x row tiles underfills the GPU,
    and never into splits shorter than min_tokens_per_split (when max_seq_len is known).

    The split count is an upper bound: the kernel gives each split at least
    min_tokens_per_split of the request's real length at run time, so a plan made for a
    larger max_seq_len (vLLM captures its CUDA graphs at max_model_len) does the same work
    on short requests; its extra splits find no tokens and exit before any load.

    sm12x_residency (the bench's emulation): CTAs per SM as an SM12x SM's shared memory holds them."""
    # Rows per CTA: 16, or 32 where a 16-row CTA is alone on its SM. Two 16-row CTAs (10 warps)
    # beat one 32-row CTA (9 warps) on a Hopper SM: H200 2026-12-01, B64 H64 ctx4k 300 vs 346 us
    # (bf16), 312 vs 359 us (fp8). With one CTA per SM, as on SM12x (emulated on the H200: the
    # bench's --sm12x-residency), 32 rows read each KV tile for twice the rows: B64 H64 ctx4k
    # bf16 297 vs 519 us, B64 H128 587 vs 1035.
    narrow, wide = ROWS_PER_CTA_CHOICES[0], ROWS_PER_CTA_CHOICES[-1]
    resident = sm12x_facts(facts) if sm12x_residency else facts
    narrow_alone = ctas_per_sm(resident, smem_per_cta_of(narrow)) == 1
    rows_per_cta = forced_rows_per_cta() or (wide if rows_per_request > narrow and narrow_alone else narrow)
    row_tiles = math.ceil(rows_per_request / rows_per_cta)
    ctas = max(1, batch * row_tiles)
    per_sm = ctas_per_sm(resident, smem_per_cta_of(rows_per_cta))
    target = math.ceil(tuning["waves"] * facts.sm_count * per_sm)
    # floor: a split grid just over one wave leaves a second, mostly idle wave.
    splits = max(1, target // ctas)
    splits = min(splits, int(tuning["max_splits"]), MAX_KV_SPLITS)
    if max_seq_len:
        splits = min(splits, max(1, math.ceil(max_seq_len / int(tuning["min_tokens_per_split"]))))
    return Plan(rows_per_cta, row_tiles, max(1, splits), target)


def ragged_headroom(tuning: dict) -> int:
    return max(1, int(tuning.get("ragged_headroom", configs.DEFAULTS["ragged_headroom"])))


def balanced_splits(plan_splits: int, batch: int, tuning: dict, split_cap: int | None) -> tuple[int, int]:
    """(splits cap per request, split budget) for a plan of `plan_splits` per request that merges
    by the combine kernel. The cap is ragged_headroom times the plan's splits (at most split_cap,
    the splits the longest request can fill, and MAX_KV_SPLITS), the budget plan_splits x batch.
    The kernel then gives each split at least ceil(the batch's tiles / budget) tiles and lays the
    requests' splits end to end over budget + batch CTAs per row tile (csrc/decode/geometry.cuh,
    balanced_slot): a ragged batch's long requests take up to the cap and its short ones fewer,
    while a batch of equal lengths runs exactly the plan's splits. The workspace is indexed by
    (request, split < cap). (plan_splits, 0) where there is no headroom or the plan has fewer than
    min_balanced_splits."""
    grid = plan_splits * ragged_headroom(tuning)
    grid = min(grid, MAX_KV_SPLITS, *([split_cap] if split_cap else []))
    if plan_splits < int(tuning["min_balanced_splits"]) or grid <= plan_splits:
        return plan_splits, 0
    return grid, plan_splits * batch


def workspace_rows(facts: DeviceFacts, tuning: dict) -> int:
    """Rows of the split workspace: enough for the largest split grid plan_launch can make
    (ctas * splits <= target when splits > 1, target at most waves x SMs x 2 CTAs per SM on
    any GPU we serve), times the ragged headroom (balanced_splits), at the widest row tile."""
    max_target = math.ceil(tuning["waves"] * facts.sm_count * MAX_CTAS_PER_SM)
    return max_target * ragged_headroom(tuning) * ROWS_PER_CTA_CHOICES[-1]


def workspace(device: torch.device, facts: DeviceFacts, tuning: dict):
    """Per-device split workspace, allocated on first use and reused (CUDA-graph safe)."""
    ws = _workspaces.get(device.index)
    if ws is None:
        rows = workspace_rows(facts, tuning)
        ws = (torch.empty(rows, V_DIM, dtype=torch.float32, device=device),
              torch.empty(rows, dtype=torch.float32, device=device))
        _workspaces[device.index] = ws
    return ws


def resolve_fp8_math(value: str | None = None) -> str:
    """The FP8-cache math: `value` (the op's fp8_math argument) if given, else
    $MLA_PLUGIN_FP8_MATH, else the default "fp16" (16-bit tensor cores, the cache's own rounding
    the only error). "e4m3" is the explicit opt-in for e4m3 tensor cores (SM12x: twice the
    16-bit rate; q and P rounded to e4m3, see README)."""
    name = "fp8_math" if value is not None else FP8_MATH_ENV
    if value is None:
        value = os.environ.get(FP8_MATH_ENV) or DEFAULT_FP8_MATH
    if value not in FP8_MATH_MMA:
        raise ValueError(f"{name}: expected one of {tuple(FP8_MATH_MMA)}, got {value!r}")
    return value


def sm12x_residency() -> bool:
    """MLA_PLUGIN_SM12X_RESIDENCY=1: launch as if on SM12x, as many CTAs per SM as its 100 KiB of
    shared memory holds (bench emulation)."""
    value = os.environ.get(SM12X_RESIDENCY_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{SM12X_RESIDENCY_ENV}: expected 0 or 1, got {value!r}")
    return value == "1"


def residency_smem_bytes(facts: DeviceFacts, smem_per_cta: int) -> int:
    """Dynamic shared memory to request so that no more CTAs are resident per SM than on SM12x
    (100 KiB per SM: one of our default 86-99 KiB CTAs, two of at most 49 KiB): on a GPU
    whose SM fits more (Hopper: 228 KiB holds two 99 KiB CTAs), just over 1 / (SM12x's + 1) of
    the SM; the CTA uses only its own smem_per_cta of it. Unchanged where SM12x fits as many."""
    target = ctas_per_sm(sm12x_facts(facts), smem_per_cta)
    if ctas_per_sm(facts, smem_per_cta) <= target:
        return smem_per_cta
    share = facts.smem_per_sm // (target + 1) - SM90_RESERVED_SMEM_PER_CTA
    return (share // 16 + 1) * 16  # target + 1 of these and their reserves exceed the SM


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
    mma: str
    batch: int
    rows_per_request: int
    split_cap: int | None  # ceil(max_seq_len / min_tokens_per_split), or None when unknown
    forced_splits: int | None
    forced_rows: int | None
    sm12x_residency: bool  # MLA_PLUGIN_SM12X_RESIDENCY


@dataclass(frozen=True)
class LaunchPlan:
    variant: Variant
    num_splits: int
    min_tiles_per_split: int
    smem_bytes: int  # dynamic shared memory requested (above the kernel's own when emulating SM12x)
    partial_out: torch.Tensor | None
    partial_lse: torch.Tensor | None
    cluster_merge: bool = False  # the splits merge inside a thread block cluster: no workspace, no combine
    split_budget: int = 0  # > 0: the kernel balances num_splits over the batch's lengths (balanced_splits)


def merges_in_cluster(ext, shape: LaunchShape, variant: Variant, row_tiles: int, splits: int, smem: int,
                      tuning: dict) -> bool:
    """Whether the splits of each (request, row tile) run as one thread block cluster and merge
    in shared memory (csrc/decode/cluster_merge.cuh) rather than through the workspace and the
    combine kernel: at 2..max_cluster_splits splits, where the device holds every cluster of the
    grid at once (the driver's occupancy answer for this variant and cluster size; 0 on a
    device or variant without clusters, e.g. the e4m3 opt-in's 32-row ring)."""
    if not 2 <= splits <= int(tuning["max_cluster_splits"]):
        return False
    clusters = ext.max_active_clusters(shape.kv, shape.q, shape.out, shape.mma, variant.rows, splits, smem,
                                       shape.device_index)
    return clusters >= shape.batch * row_tiles


@functools.lru_cache(maxsize=4096)
def launch_plan(shape: LaunchShape) -> LaunchPlan:
    """The variant, its split count fitted to the device's split workspace (allocated here on
    first need), and the shared memory to request."""
    ext = extension()
    facts = device_facts(shape.device_index)
    tuning = configs.tuning_for(facts.name)

    def smem_of(rows: int) -> int:
        return ext.smem_bytes(shape.kv, shape.q, shape.out, shape.mma, rows)

    max_seq_len = None if shape.split_cap is None else shape.split_cap * int(tuning["min_tokens_per_split"])
    plan = plan_launch(shape.batch, shape.rows_per_request, facts, smem_of, tuning, max_seq_len,
                       shape.sm12x_residency)
    variant = kernel_variants.find(shape.kv, shape.q, shape.out, shape.mma, plan.rows_per_cta)
    if variant is None:
        raise ValueError(f"mla_plugin: no compiled kernel for kv={shape.kv} q={shape.q} out={shape.out} "
                         f"mma={shape.mma} rows_per_cta={plan.rows_per_cta} (csrc/variants.def lists them)")
    smem = smem_of(plan.rows_per_cta)
    if shape.sm12x_residency:
        smem = residency_smem_bytes(facts, smem)
    tokens_per_tile = ext.tokens_per_tile(shape.kv, shape.q, shape.out, shape.mma, plan.rows_per_cta)
    # A forced split count (tune's sweeps) is taken as it is: one tile per split at least.
    min_tiles = 1 if shape.forced_splits else max(1, int(tuning["min_tokens_per_split"]) // tokens_per_tile)
    splits = shape.forced_splits or plan.num_splits
    _launched.add(variant)
    # Length-balanced splits where the plan has few splits per request (each a long run of tiles,
    # so a ragged batch's longest request decides the step), before the cluster merge: serving
    # batches are ragged (csrc/README.md, measured 2026-12-02 fifth session).
    cap, budget = (splits, 0) if shape.forced_splits or splits > int(tuning["max_balanced_splits"]) else \
        balanced_splits(splits, shape.batch, tuning, shape.split_cap)
    if not budget and merges_in_cluster(ext, shape, variant, plan.row_tiles, splits, smem, tuning):
        return LaunchPlan(variant, splits, min_tiles, smem, None, None, cluster_merge=True)
    if splits > 1 or budget:
        partial_out, partial_lse = workspace(torch.device("cuda", shape.device_index), facts, tuning)
        capacity_ctas = partial_lse.shape[0] // plan.rows_per_cta
        capacity_splits = capacity_ctas // max(1, shape.batch * plan.row_tiles)
        if budget and cap <= capacity_splits:
            splits = cap
        else:
            budget = 0
        splits = max(1, min(splits, capacity_splits))
    if splits == 1:
        return LaunchPlan(variant, 1, min_tiles, smem, None, None)
    return LaunchPlan(variant, splits, min_tiles, smem, partial_out, partial_lse, split_budget=budget)


def launch(q_nope, q_pe, kv_cache, block_table, seq_lens, out, lse, *, softmax_scale,
           kv_scale=None, q_scale=None, query_len=1, causal=True, max_seq_len=None,
           fp8_math=None) -> None:
    ext = extension()
    device = q_nope.device
    split_cap = None
    if max_seq_len:
        facts = device_facts(device.index)
        split_cap = -(-int(max_seq_len) // int(configs.tuning_for(facts.name)["min_tokens_per_split"]))
    kv = _DTYPE_NAMES[kv_cache.dtype]
    mma = kernel_variants.mma_for(kv, resolve_fp8_math(fp8_math)) if kv == "fp8" else kv
    shape = LaunchShape(device.index, kv, _DTYPE_NAMES[q_nope.dtype], _DTYPE_NAMES[out.dtype], mma,
                        seq_lens.shape[0], query_len * q_nope.shape[1], split_cap, forced_splits(),
                        forced_rows_per_cta(), sm12x_residency())
    plan = launch_plan(shape)
    kv_scale_t, kv_scale_v = _scale(kv_scale, device, "kv_scale")
    q_scale_t, q_scale_v = _scale(q_scale, device, "q_scale")
    ext.decode(q_nope, q_pe, kv_cache, block_table, seq_lens, out, lse, plan.partial_out, plan.partial_lse,
               float(softmax_scale), kv_scale_t, kv_scale_v, q_scale_t, q_scale_v, int(query_len),
               bool(causal), plan.variant.mma, plan.variant.rows, plan.num_splits, plan.min_tiles_per_split,
               plan.split_budget, plan.cluster_merge, plan.smem_bytes)


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
