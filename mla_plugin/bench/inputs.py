"""The tensors one bench shape runs on (both kernels get the very same ones).

Data, chosen to look like a real decode step and to make wrong answers visible:
- KV cache: N(0, 1) values, like DeepSeek's RMS-normed latent and its rotated RoPE part;
  never zeros (a zero cache hides errors in P.V). FP8 stores x / kv_scale in e4m3 with
  kv_scale = 0.05, a calibrated-looking scale that is not a power of two (so a kernel
  that drops or misapplies it is caught), keeping the stored values (about N(0, 20^2))
  well inside e4m3's +-448.
- q: N(0, 1) in bf16, softmax scale 1/sqrt(192) (DeepSeek V2/V3: qk_nope 128 + rope 64).
  The logits then have a standard deviation of about 1.7: neither uniform attention
  (whose output is a near-zero mean that hides P errors) nor one-hot.
- Block table: a random permutation of all pages, so no request's pages are contiguous.
- Lengths (seq_len includes the query_len new tokens): "uniform", every request at the full
  context; "ragged", each request's length drawn uniformly in [query_len, context] by a
  generator seeded with the run's seed (request_lengths: plain Python, so the row's byte and
  FLOP counts know the lengths before any tensor exists, and both contenders, both modes
  and the reference see the very same ones). A causal request needs seq_len >= query_len,
  hence the lower end (1 for the usual query_len 1). The cache holds `context` tokens of
  pages per request either way.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from mla_plugin.bench.grid import Shape
from mla_plugin.bench.roofline import KV_DIM, V_DIM

SOFTMAX_SCALE = 1.0 / math.sqrt(192)
FP8_KV_SCALE = 0.05
TORCH_KV_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
_CHUNK_ELEMENTS = 1 << 24  # random values are made in fp32 chunks of this size (64 MiB)


@dataclass
class DecodeInputs:
    shape: Shape
    q: torch.Tensor  # [T, H, 576] bf16, T = batch * query_len
    kv_cache: torch.Tensor  # [num_blocks, page_size, 576] bf16 or float8_e4m3fn
    block_table: torch.Tensor  # [batch, pages_per_request] int32
    seq_lens: torch.Tensor  # [batch] int32
    kv_scale: torch.Tensor | None  # [1] fp32 for FP8 (vLLM's layer._k_scale), else None
    softmax_scale: float
    lengths: list[int] = field(default_factory=list)  # seq_lens on the host (no device read needed)

    @property
    def max_seq_len(self) -> int:
        return max(self.lengths)

    @property
    def kv_scale_value(self) -> float:
        return float(self.kv_scale.item()) if self.kv_scale is not None else 1.0


def request_lengths(shape: Shape, seed: int = 0) -> list[int]:
    """Each request's seq_len: all `context` (uniform), or drawn uniformly in
    [query_len, context] from random.Random(seed) (ragged; Python's generator gives the same
    draws on every platform and version)."""
    if shape.lengths == "uniform":
        return [shape.context] * shape.batch
    if shape.lengths == "ragged":
        rng = random.Random(seed)
        return [rng.randint(shape.query_len, shape.context) for _ in range(shape.batch)]
    raise ValueError(f"unknown lengths {shape.lengths!r} (expected uniform or ragged)")


def num_blocks(shape: Shape) -> int:
    return shape.batch * shape.pages_per_request


def input_bytes(shape: Shape) -> int:
    """Device memory of the inputs and of one kernel's out [T,H,512] bf16 + lse [T,H] fp32."""
    kv = num_blocks(shape) * shape.page_size * KV_DIM * (1 if shape.dtype == "fp8" else 2)
    q = shape.rows * shape.heads * KV_DIM * 2
    out_lse = shape.rows * shape.heads * (V_DIM * 2 + 4)
    tables = num_blocks(shape) * 4 + shape.batch * 4
    return kv + q + out_lse + tables


def make_inputs(shape: Shape, device, seed: int = 0) -> DecodeInputs:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    q = torch.randn(shape.rows, shape.heads, KV_DIM, generator=generator, device=device,
                    dtype=torch.float32).to(torch.bfloat16)
    kv_scale = None
    if shape.dtype == "fp8":
        kv_scale = torch.tensor([FP8_KV_SCALE], dtype=torch.float32, device=device)
    kv_cache = _random_cache(num_blocks(shape), shape.page_size, shape.dtype, device, generator)
    block_table = torch.randperm(num_blocks(shape), generator=generator, device=device)
    block_table = block_table.to(torch.int32).view(shape.batch, shape.pages_per_request)
    lengths = request_lengths(shape, seed)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    return DecodeInputs(shape=shape, q=q, kv_cache=kv_cache, block_table=block_table, seq_lens=seq_lens,
                        kv_scale=kv_scale, softmax_scale=SOFTMAX_SCALE, lengths=lengths)


def _random_cache(blocks: int, page_size: int, dtype: str, device, generator) -> torch.Tensor:
    """N(0, 1) values (stored / FP8_KV_SCALE in FP8), made in chunks so that the fp32
    temporaries stay small next to a multi-GB cache."""
    cache = torch.empty(blocks, page_size, KV_DIM, dtype=TORCH_KV_DTYPES[dtype], device=device)
    divisor = FP8_KV_SCALE if dtype == "fp8" else 1.0
    step = max(1, _CHUNK_ELEMENTS // (page_size * KV_DIM))
    for start in range(0, blocks, step):
        n = min(step, blocks - start)
        values = torch.randn(n, page_size, KV_DIM, generator=generator, device=device, dtype=torch.float32)
        cache[start:start + n] = (values / divisor).to(cache.dtype)
    return cache
