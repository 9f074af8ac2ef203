"""mla_decode: the public MLA decode op.

Works without vLLM. On CUDA tensors it checks every argument, then launches the kernel
through mla_plugin.dispatch; on CPU tensors it computes the result with the fp32
reference (mla_plugin.reference): the slow reference path, meant for tests and tools.
There is no fallback from CUDA to the reference: a CUDA call that cannot launch raises.
"""

from __future__ import annotations

import os

import torch

from mla_plugin import dispatch
from mla_plugin.op_checks import LATENT_DIM, check_arguments, check_values
from mla_plugin.reference import mla_decode_reference

# Checks that read seq_lens / block_table need a host sync on CUDA: opt-in there.
CHECK_VALUES_ENV = "MLA_PLUGIN_CHECK_VALUES"


def mla_decode(
    q,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    softmax_scale: float,
    kv_scale=None,
    q_scale=None,
    query_len: int = 1,
    causal: bool = True,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    return_lse: bool = False,
    max_seq_len: int | None = None,
    fp8_math: str | None = None,
):
    """MLA decode attention over a paged latent KV cache.

    Args:
        q: [T, H, 576] or the pair (q_nope [T, H, 512], q_pe [T, H, 64]); T = B *
            query_len, H in 1..128; bf16, fp16, or float8_e4m3fn (fp8 cache only).
            Strided views are fine when the last dim is contiguous; a q whose pointer or
            row strides are not 16-byte multiples is copied first (correct, slower).
        kv_cache: [num_blocks, block_size, 576], block_size 16/32/64/128, bf16, fp16,
            float8_e4m3fn or uint8 (fp8 bits). Channels 0..511 are the latent (K and
            V), 512..575 the RoPE part (K only). stride(0) may be padded; pointer and
            stride(0) in bytes must be multiples of 16. A 16-bit cache needs q of the
            same dtype; an fp8 cache takes bf16/fp16 q (the kernel quantises each row of
            q itself) or fp8 q (with q_scale).
        block_table: [B, max_blocks] int32, rows contiguous. Entries past a request's
            pages are never read.
        seq_lens: [B] int32, contiguous, including the new tokens; 0 marks a padding
            row (output zeros, lse -inf).
        softmax_scale: positive finite float multiplying q.k.
        kv_scale: dequant scale of an fp8 cache (K and V): float or 1-element float32
            tensor on q's device; None means 1.0. Must be None for a 16-bit cache.
        q_scale: dequant scale of an fp8 q, same forms; None means 1.0.
        query_len: query rows per request, 1..8 (MTP / speculative decode).
        causal: row t of a request sees its first seq_len - query_len + 1 + t tokens;
            when False every row sees all seq_len tokens.
        out: optional [T, H, 512] output, q's dtype (bf16 or fp16 when q is fp8),
            last dim contiguous, 16-byte aligned rows.
        lse: optional [T, H] float32 contiguous output: natural-log sum of exp(scores).
        return_lse: return (out, lse) instead of out.
        max_seq_len: optional upper bound of seq_lens, a hint for the kernel's split.
            A plan made for a larger bound (vLLM's CUDA graphs are captured at
            max_model_len) costs nothing on short requests: splits that find no tokens
            exit before any load.
        fp8_math: FP8 caches only. "fp16" (the default) multiplies with 16-bit tensor
            cores on the cache converted exactly from e4m3, q and P kept in 16 bit: the
            cache's own rounding is the only error, as in TRITON_MLA. "e4m3" is the
            explicit opt-in for e4m3 tensor cores (twice the 16-bit rate on SM12x, emulated
            on Hopper): q and P are rounded to e4m3 too, several times the error (see
            README). None takes $MLA_PLUGIN_FP8_MATH, else "fp16".

    Value checks (seq_lens within 0..max_blocks*block_size and >= query_len when causal
    and nonzero, used block_table entries within the cache, max_seq_len >= seq_lens)
    read the tensors, which on CUDA is a host sync: they always run on CPU tensors and
    on CUDA only with MLA_PLUGIN_CHECK_VALUES=1. Unchecked, the kernel still clamps each
    request to its block_table row, so it never reads outside the table.

    With out (and lse) given, the CUDA path allocates nothing and never syncs with the
    host, so it can be captured in a CUDA graph.
    """
    args = check_arguments(
        q, kv_cache, block_table, seq_lens, softmax_scale=softmax_scale,
        kv_scale=kv_scale, q_scale=q_scale, query_len=query_len, causal=causal,
        out=out, lse=lse, return_lse=return_lse, max_seq_len=max_seq_len,
    )
    _check_fp8_math(fp8_math, args)
    on_cpu = args.device.type == "cpu"
    if on_cpu or os.environ.get(CHECK_VALUES_ENV) == "1":
        check_values(args, query_len=query_len, causal=causal, max_seq_len=max_seq_len)

    if out is None:
        out = torch.empty(args.num_rows, args.num_heads, LATENT_DIM,
                          dtype=args.out_dtype, device=args.device)
    if lse is None:
        lse = torch.empty(args.num_rows, args.num_heads, dtype=torch.float32,
                          device=args.device)

    if on_cpu:
        _decode_with_reference(args, out, lse, softmax_scale=softmax_scale,
                               kv_scale=kv_scale, q_scale=q_scale,
                               query_len=query_len, causal=causal)
    elif args.num_rows > 0:
        _launch_cuda(args, out, lse, softmax_scale=softmax_scale, kv_scale=kv_scale,
                     q_scale=q_scale, query_len=query_len, causal=causal,
                     max_seq_len=max_seq_len, fp8_math=fp8_math)
    return (out, lse) if return_lse else out


def _check_fp8_math(fp8_math, args) -> None:
    """fp8_math names the math of an FP8 cache: refuse it for a 16-bit cache, and any
    value (argument or environment) other than the two paths."""
    if fp8_math is not None and args.kv_cache.dtype != torch.float8_e4m3fn:
        raise ValueError(f"mla_decode: fp8_math applies to a float8_e4m3fn (or uint8) kv_cache; got "
                         f"fp8_math={fp8_math!r} with a {args.kv_cache.dtype} cache (leave it None)")
    if args.kv_cache.dtype == torch.float8_e4m3fn:
        try:
            dispatch.resolve_fp8_math(fp8_math)
        except ValueError as exc:
            raise ValueError(f"mla_decode: {exc}") from None


def _launch_cuda(args, out, lse, *, softmax_scale, kv_scale, q_scale, query_len, causal,
                 max_seq_len, fp8_math) -> None:
    """The kernel, on the tensors' own device (not necessarily the current one): the binding
    guards that device and launches on its current stream."""
    dispatch.launch(
        args.q_nope, args.q_pe, args.kv_cache, args.block_table, args.seq_lens,
        out, lse, softmax_scale=float(softmax_scale),
        kv_scale=_plain_scale(kv_scale), q_scale=_plain_scale(q_scale),
        query_len=int(query_len), causal=causal,
        max_seq_len=None if max_seq_len is None else int(max_seq_len), fp8_math=fp8_math,
    )


def _plain_scale(scale):
    """A tensor scale stays on the device (no sync); a number becomes a Python float."""
    return scale if scale is None or isinstance(scale, torch.Tensor) else float(scale)


def _decode_with_reference(args, out, lse, *, softmax_scale, kv_scale, q_scale,
                           query_len, causal) -> None:
    """The slow CPU path: the fp32 reference, cast to the output dtype."""
    ref_out, ref_lse = mla_decode_reference(
        (args.q_nope, args.q_pe), args.kv_cache, args.block_table, args.seq_lens,
        softmax_scale=softmax_scale, kv_scale=kv_scale, q_scale=q_scale,
        query_len=query_len, causal=causal,
    )
    out.copy_(ref_out.to(out.dtype))
    lse.copy_(ref_lse)
