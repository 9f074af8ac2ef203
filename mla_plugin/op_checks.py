"""Argument checks of mla_decode, done before any launch.

``check_arguments`` looks only at metadata (dtype, shape, stride, device, pointer
alignment), so it never synchronises with the GPU and is safe inside CUDA-graph capture.
``check_values`` reads seq_lens and block_table, which costs a host sync on CUDA: the op
runs it always on CPU tensors and on CUDA only when MLA_PLUGIN_CHECK_VALUES=1.

Every failure is a ValueError that names the argument and the expected value.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NoReturn

import torch

from mla_plugin.geometry import (  # noqa: F401  (re-exported: ops and tests use them from here)
    ALIGN_BYTES, BLOCK_SIZES, HEAD_DIM, LATENT_DIM, MAX_HEADS, MAX_QUERY_LEN, ROPE_DIM,
)

FP8 = torch.float8_e4m3fn
HALF_DTYPES = (torch.bfloat16, torch.float16)
Q_DTYPES = (torch.bfloat16, torch.float16, FP8)
CACHE_DTYPES = (torch.bfloat16, torch.float16, FP8, torch.uint8)


def fail(argument: str, expected: str, got) -> NoReturn:
    raise ValueError(f"mla_decode: {argument} must be {expected}; got {got}")


@dataclass
class DecodeArgs:
    """Checked arguments, in the form dispatch.launch takes them."""

    q_nope: torch.Tensor  # [T, H, 512]
    q_pe: torch.Tensor  # [T, H, 64], same dtype
    kv_cache: torch.Tensor  # [num_blocks, block_size, 576], uint8 viewed as fp8
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    out: torch.Tensor | None
    lse: torch.Tensor | None
    out_dtype: torch.dtype
    num_rows: int
    num_heads: int
    device: torch.device


def check_arguments(
    q, kv_cache, block_table, seq_lens, *, softmax_scale, kv_scale, q_scale, query_len,
    causal, out, lse, return_lse, max_seq_len,
) -> DecodeArgs:
    q_nope, q_pe = _check_query(q)
    num_rows, num_heads = q_nope.shape[0], q_nope.shape[1]
    kv_cache = _check_cache(kv_cache)
    _check_dtype_pairing(q_nope.dtype, kv_cache.dtype)
    batch = _check_tables(block_table, seq_lens)
    _check_flags(query_len, causal, return_lse, max_seq_len)
    if num_rows != batch * query_len:
        fail("q", f"{batch * query_len} rows (batch {batch} x query_len {query_len}, "
             "batch = seq_lens.shape[0])", f"{num_rows} rows")
    _check_softmax_scale(softmax_scale)
    _check_scale("kv_scale", kv_scale, applies=kv_cache.dtype == FP8,
                 needs="a float8_e4m3fn (or uint8) kv_cache")
    _check_scale("q_scale", q_scale, applies=q_nope.dtype == FP8, needs="a float8_e4m3fn q")
    out_dtype = _check_out(out, q_nope.dtype, num_rows, num_heads)
    _check_lse(lse, num_rows, num_heads)
    device = _check_devices(
        q=q_nope, q_pe=q_pe, kv_cache=kv_cache, block_table=block_table,
        seq_lens=seq_lens, out=out, lse=lse, kv_scale=kv_scale, q_scale=q_scale,
    )
    q_nope, q_pe = _aligned_query(q_nope, q_pe)
    return DecodeArgs(
        q_nope=q_nope, q_pe=q_pe, kv_cache=kv_cache, block_table=block_table,
        seq_lens=seq_lens, out=out, lse=lse, out_dtype=out_dtype,
        num_rows=num_rows, num_heads=num_heads, device=device,
    )


def check_values(args: DecodeArgs, *, query_len: int, causal: bool, max_seq_len) -> None:
    """Checks that read tensor contents (a host sync on CUDA)."""
    seq_lens = args.seq_lens.to("cpu", torch.int64)
    block_table = args.block_table.to("cpu", torch.int64)
    num_blocks, block_size = args.kv_cache.shape[0], args.kv_cache.shape[1]
    capacity = block_table.shape[1] * block_size
    for row, length in enumerate(seq_lens.tolist()):
        if not 0 <= length <= capacity:
            fail(f"seq_lens[{row}]", f"in 0..{capacity} (block_table.shape[1] "
                 f"{block_table.shape[1]} x block_size {block_size})", length)
        if causal and 0 < length < query_len:
            fail(f"seq_lens[{row}]", f"0 or >= query_len {query_len} (causal: each "
                 "request's seq_len includes its query_len new tokens)", length)
        pages = -(-length // block_size)
        used = block_table[row, :pages]
        bad = ((used < 0) | (used >= num_blocks)).nonzero()
        if bad.numel():
            col = int(bad[0, 0])
            fail(f"block_table[{row}, {col}]", f"a block index in 0..{num_blocks - 1} "
                 f"(kv_cache.shape[0] = {num_blocks}; the page holds tokens of "
                 f"seq_lens[{row}] = {length})", int(used[col]))
    if max_seq_len is not None and seq_lens.numel():
        longest = int(seq_lens.max())
        if max_seq_len < longest:
            fail("max_seq_len", f">= max(seq_lens) = {longest}", max_seq_len)


def _check_query(q) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(q, (tuple, list)):
        if len(q) != 2 or not all(isinstance(t, torch.Tensor) for t in q):
            fail("q", "a tensor [T, H, 576] or a (q_nope [T, H, 512], q_pe [T, H, 64]) "
                 "pair of tensors", f"a {type(q).__name__} of {len(q)} items")
        q_nope, q_pe = q
        _check_query_part("q_nope", q_nope, LATENT_DIM)
        _check_query_part("q_pe", q_pe, ROPE_DIM)
        if q_pe.dtype != q_nope.dtype:
            fail("q_pe.dtype", f"q_nope's dtype {q_nope.dtype}", q_pe.dtype)
        if q_pe.shape[:2] != q_nope.shape[:2]:
            fail("q_pe.shape", f"[{q_nope.shape[0]}, {q_nope.shape[1]}, 64] "
                 "(q_nope's T and H)", list(q_pe.shape))
        return q_nope, q_pe
    if not isinstance(q, torch.Tensor):
        fail("q", "a tensor [T, H, 576] or a (q_nope, q_pe) pair", type(q).__name__)
    _check_query_part("q", q, HEAD_DIM)
    return q[..., :LATENT_DIM], q[..., LATENT_DIM:]


def _check_query_part(name: str, t: torch.Tensor, last_dim: int) -> None:
    if t.dtype not in Q_DTYPES:
        fail(f"{name}.dtype", "torch.bfloat16, torch.float16 or torch.float8_e4m3fn", t.dtype)
    if t.dim() != 3 or t.shape[2] != last_dim:
        fail(f"{name}.shape", f"[T, H, {last_dim}]", list(t.shape))
    if not 1 <= t.shape[1] <= MAX_HEADS:
        fail(f"{name}.shape[1] (heads)", f"in 1..{MAX_HEADS}", t.shape[1])
    if t.stride(2) != 1:
        fail(f"{name}.stride(2)", "1 (last dim contiguous)", t.stride(2))


def _check_cache(kv_cache) -> torch.Tensor:
    if not isinstance(kv_cache, torch.Tensor):
        fail("kv_cache", "a tensor [num_blocks, block_size, 576]", type(kv_cache).__name__)
    if kv_cache.dtype not in CACHE_DTYPES:
        fail("kv_cache.dtype", "torch.bfloat16, torch.float16, torch.float8_e4m3fn or "
             "torch.uint8 (fp8 bits)", kv_cache.dtype)
    if kv_cache.dim() != 3 or kv_cache.shape[2] != HEAD_DIM:
        fail("kv_cache.shape", "[num_blocks, block_size, 576]", list(kv_cache.shape))
    block_size = kv_cache.shape[1]
    if block_size not in BLOCK_SIZES:
        fail("kv_cache.shape[1] (block_size)", "one of 16, 32, 64, 128", block_size)
    if kv_cache.stride(2) != 1:
        fail("kv_cache.stride(2)", "1 (channels contiguous)", kv_cache.stride(2))
    if kv_cache.stride(1) != HEAD_DIM:
        fail("kv_cache.stride(1)", "576 (tokens of a block packed)", kv_cache.stride(1))
    if kv_cache.stride(0) < block_size * HEAD_DIM:
        fail("kv_cache.stride(0)", f">= block_size * 576 = {block_size * HEAD_DIM} "
             "(blocks may be padded, never overlap)", kv_cache.stride(0))
    elem = kv_cache.element_size()
    if kv_cache.data_ptr() % ALIGN_BYTES:
        fail("kv_cache.data_ptr()", "a multiple of 16 bytes", kv_cache.data_ptr())
    if kv_cache.stride(0) * elem % ALIGN_BYTES:
        fail("kv_cache.stride(0) * element_size", "a multiple of 16 bytes",
             kv_cache.stride(0) * elem)
    return kv_cache.view(FP8) if kv_cache.dtype == torch.uint8 else kv_cache


def _check_dtype_pairing(q_dtype: torch.dtype, cache_dtype: torch.dtype) -> None:
    if cache_dtype in HALF_DTYPES and q_dtype != cache_dtype:
        fail("q.dtype", f"{cache_dtype} (a 16-bit kv_cache needs q of the same dtype)",
             q_dtype)
    if cache_dtype == FP8 and q_dtype not in Q_DTYPES:
        fail("q.dtype", "torch.bfloat16, torch.float16 or torch.float8_e4m3fn with an fp8 "
             "kv_cache", q_dtype)


def _check_tables(block_table, seq_lens) -> int:
    if not isinstance(block_table, torch.Tensor):
        fail("block_table", "an int32 tensor [B, max_blocks]", type(block_table).__name__)
    if block_table.dtype != torch.int32:
        fail("block_table.dtype", "torch.int32", block_table.dtype)
    if block_table.dim() != 2:
        fail("block_table.shape", "[B, max_blocks]", list(block_table.shape))
    if block_table.shape[1] > 1 and block_table.stride(1) != 1:
        fail("block_table.stride(1)", "1 (rows contiguous)", block_table.stride(1))
    if not isinstance(seq_lens, torch.Tensor):
        fail("seq_lens", "an int32 tensor [B]", type(seq_lens).__name__)
    if seq_lens.dtype != torch.int32:
        fail("seq_lens.dtype", "torch.int32", seq_lens.dtype)
    if seq_lens.dim() != 1 or seq_lens.shape[0] != block_table.shape[0]:
        fail("seq_lens.shape", f"[{block_table.shape[0]}] (block_table.shape[0])",
             list(seq_lens.shape))
    if not seq_lens.is_contiguous():
        fail("seq_lens", "contiguous", f"stride {seq_lens.stride()}")
    return seq_lens.shape[0]


def _check_flags(query_len, causal, return_lse, max_seq_len) -> None:
    if not _is_int(query_len) or not 1 <= query_len <= MAX_QUERY_LEN:
        fail("query_len", f"an int in 1..{MAX_QUERY_LEN}", repr(query_len))
    if not isinstance(causal, bool):
        fail("causal", "a bool", repr(causal))
    if not isinstance(return_lse, bool):
        fail("return_lse", "a bool", repr(return_lse))
    if max_seq_len is not None and (not _is_int(max_seq_len) or max_seq_len < 0):
        fail("max_seq_len", "None or an int >= 0", repr(max_seq_len))


def _check_softmax_scale(softmax_scale) -> None:
    if not _is_real(softmax_scale) or not math.isfinite(softmax_scale) or softmax_scale <= 0:
        fail("softmax_scale", "a positive finite float", repr(softmax_scale))


def _check_scale(name: str, scale, *, applies: bool, needs: str) -> None:
    if scale is None:
        return
    if not applies:
        fail(name, f"None (a dequantisation scale only applies to {needs})", repr(scale))
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or scale.dtype != torch.float32:
            fail(name, "a float or a 1-element torch.float32 tensor",
                 f"a {scale.dtype} tensor of shape {list(scale.shape)}")
        return  # its value stays on the device: reading it would sync
    if not _is_real(scale) or not math.isfinite(scale) or scale <= 0:
        fail(name, "a positive finite float or a 1-element torch.float32 tensor", repr(scale))


def _check_out(out, q_dtype: torch.dtype, num_rows: int, num_heads: int) -> torch.dtype:
    if q_dtype == FP8:
        allowed, default = HALF_DTYPES, torch.bfloat16
        expected_dtype = "torch.bfloat16 or torch.float16 (q is fp8)"
    else:
        allowed, default = (q_dtype,), q_dtype
        expected_dtype = f"{q_dtype} (q's dtype)"
    if out is None:
        return default
    if not isinstance(out, torch.Tensor):
        fail("out", f"None or a tensor [{num_rows}, {num_heads}, 512]", type(out).__name__)
    if out.dtype not in allowed:
        fail("out.dtype", expected_dtype, out.dtype)
    if list(out.shape) != [num_rows, num_heads, LATENT_DIM]:
        fail("out.shape", f"[{num_rows}, {num_heads}, 512] (q's T and H)", list(out.shape))
    if out.stride(2) != 1:
        fail("out.stride(2)", "1 (last dim contiguous)", out.stride(2))
    if not _is_aligned(out):
        fail("out", "16-byte aligned (data_ptr and row strides in bytes multiples of 16)",
             f"data_ptr {out.data_ptr()}, strides {out.stride()}")
    return out.dtype


def _check_lse(lse, num_rows: int, num_heads: int) -> None:
    if lse is None:
        return
    if not isinstance(lse, torch.Tensor):
        fail("lse", f"None or a float32 tensor [{num_rows}, {num_heads}]", type(lse).__name__)
    if lse.dtype != torch.float32:
        fail("lse.dtype", "torch.float32", lse.dtype)
    if list(lse.shape) != [num_rows, num_heads]:
        fail("lse.shape", f"[{num_rows}, {num_heads}] (q's T and H)", list(lse.shape))
    if not lse.is_contiguous():
        fail("lse", "contiguous", f"stride {lse.stride()}")


def _check_devices(**tensors) -> torch.device:
    device = tensors["q"].device
    if device.type not in ("cuda", "cpu"):
        fail("q.device", "a CUDA device or the CPU", device)
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device != device:
            fail(f"{name}.device", f"{device} (all tensors on q's device)", t.device)
    return device


def _aligned_query(q_nope: torch.Tensor, q_pe: torch.Tensor):
    """Views the kernel can load as they are, or aligned copies (correct, slower)."""
    if q_nope.dtype == FP8:
        # The fp8 kernel reads q_pe at q_nope + 512 with q_nope's strides: one tensor.
        q_pe_follows = (
            q_pe.data_ptr() == q_nope.data_ptr() + LATENT_DIM and q_pe.stride() == q_nope.stride()
        )
        if q_pe_follows and _is_aligned(q_nope):
            return q_nope, q_pe
        whole = torch.empty(*q_nope.shape[:2], HEAD_DIM, dtype=FP8, device=q_nope.device)
        whole[..., :LATENT_DIM].copy_(q_nope)
        whole[..., LATENT_DIM:].copy_(q_pe)
        return whole[..., :LATENT_DIM], whole[..., LATENT_DIM:]
    if not _is_aligned(q_nope):
        q_nope = _fresh_copy(q_nope)
    if not _is_aligned(q_pe):
        q_pe = _fresh_copy(q_pe)
    return q_nope, q_pe


def _fresh_copy(t: torch.Tensor) -> torch.Tensor:
    # A new allocation, so also aligned when t is contiguous at an odd address
    # (t.contiguous() would return t itself then).
    return torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)


def _is_aligned(t: torch.Tensor) -> bool:
    if t.data_ptr() % ALIGN_BYTES:
        return False
    elem = t.element_size()
    return all(
        size == 1 or stride * elem % ALIGN_BYTES == 0
        for size, stride in zip(t.shape[:-1], t.stride()[:-1])
    )


def _is_int(value) -> bool:
    # numbers.Integral also admits numpy integers; bool is refused on purpose.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
