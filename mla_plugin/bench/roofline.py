"""What a decode step costs and what the hardware allows: FLOP and byte counts, roofline
floors, and the summary statistics of the bench (pure Python).

Counting (the same for every kernel, so that numbers compare):
- FLOPs: every (query token, head) row does a 576-long dot product (Q.K) and a 512-long
  multiply-add (P.V) per KV token it attends, 2 * (576 + 512) = 2176 FLOP per token.
- Bytes: each request's KV read once (seq_len * 576 * element size; the heads share it),
  plus q read (bf16) and out written (bf16). Re-reads, split-KV scratch and the LSE are
  the kernel's own overhead and are not counted, so the percentages are of useful traffic.
Both count each request at its own length, `seq_lens` (a ragged batch); without it every
request is at the shape's full context.
"""

from __future__ import annotations

import math
import statistics

from mla_plugin.bench.grid import Shape

from mla_plugin.geometry import FLOP_PER_ROW_TOKEN, V_DIM
from mla_plugin.geometry import HEAD_DIM as KV_DIM  # 512 latent (K and V) + 64 RoPE (K only)
Q_ELEMENT_BYTES = 2  # q is bf16 for both cache dtypes
OUT_ELEMENT_BYTES = 2
KV_ELEMENT_BYTES = {"bf16": 2, "fp8": 1}


def attended_tokens(context: int, query_len: int = 1, causal: bool = True) -> list[int]:
    """Tokens each query row of one request attends: with causal, row t of query_len
    sees the first context - query_len + 1 + t tokens; otherwise all of them."""
    if causal:
        return [context - query_len + 1 + t for t in range(query_len)]
    return [context] * query_len


def per_request_lengths(shape: Shape, seq_lens=None) -> list[int]:
    """seq_lens as a list (one per request), or every request at the full context."""
    if seq_lens is None:
        return [shape.context] * shape.batch
    lengths = [int(n) for n in seq_lens]
    if len(lengths) != shape.batch:
        raise ValueError(f"{len(lengths)} seq_lens for a batch of {shape.batch}")
    return lengths


def decode_flops(shape: Shape, causal: bool = True, seq_lens=None) -> int:
    attended = sum(sum(attended_tokens(n, shape.query_len, causal)) for n in per_request_lengths(shape, seq_lens))
    return shape.heads * attended * FLOP_PER_ROW_TOKEN


def decode_bytes(shape: Shape, seq_lens=None) -> int:
    kv = sum(per_request_lengths(shape, seq_lens)) * KV_DIM * KV_ELEMENT_BYTES[shape.dtype]
    q = shape.rows * shape.heads * KV_DIM * Q_ELEMENT_BYTES
    out = shape.rows * shape.heads * V_DIM * OUT_ELEMENT_BYTES
    return kv + q + out


def copy_bandwidth_gbs(bytes_per_buffer: int, seconds: float) -> float:
    """A device-to-device copy of one buffer reads it and writes it: 2x its bytes move."""
    return 2 * bytes_per_buffer / seconds / 1e9


def memory_floor_us(nbytes: int, copy_bw_gbs: float) -> float:
    return nbytes / (copy_bw_gbs * 1e9) * 1e6


def compute_floor_us(flops: int, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return flops / (peak_tflops * 1e12) * 1e6


def kernel_metrics(shape: Shape, time_us: float, copy_bw_gbs: float, mma_peak_tflops: float | None,
                   seq_lens=None) -> dict:
    """Achieved rates of one timed kernel and how close they come to each floor.

    pct_roofline is the roofline time (the larger floor) over the measured time: 100
    means the kernel runs at the hardware's limit for this shape. Without an mma peak
    only the memory floor is known and the compute columns are None.
    """
    flops = decode_flops(shape, seq_lens=seq_lens)
    nbytes = decode_bytes(shape, seq_lens)
    seconds = time_us * 1e-6
    gbs = nbytes / seconds / 1e9
    tflops = flops / seconds / 1e12
    mem_floor = memory_floor_us(nbytes, copy_bw_gbs)
    comp_floor = compute_floor_us(flops, mma_peak_tflops)
    roofline_us = max(mem_floor, comp_floor) if comp_floor is not None else mem_floor
    return {
        "gbs": gbs,
        "pct_copy_bw": 100.0 * gbs / copy_bw_gbs,
        "tflops": tflops,
        "pct_mma_peak": 100.0 * tflops / mma_peak_tflops if mma_peak_tflops else None,
        "memory_floor_us": mem_floor,
        "compute_floor_us": comp_floor,
        "pct_roofline": 100.0 * roofline_us / time_us,
        "bound": "compute" if comp_floor is not None and comp_floor > mem_floor else "memory",
    }


def arithmetic_intensity(shape: Shape, seq_lens=None) -> float:
    """FLOP per byte of the counted traffic (compare with peak / bandwidth)."""
    return decode_flops(shape, seq_lens=seq_lens) / decode_bytes(shape, seq_lens)


def geomean(values) -> float | None:
    """Geometric mean of positive values; None when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if any(v <= 0 for v in values):
        raise ValueError(f"geomean needs positive values, got {values}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def median(values) -> float:
    return statistics.median(values)
