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
"""

from __future__ import annotations


def launch(q_nope, q_pe, kv_cache, block_table, seq_lens, out, lse, *, softmax_scale,
           kv_scale=None, q_scale=None, query_len=1, causal=True, max_seq_len=None) -> None:
    raise RuntimeError(
        "mla_plugin: the CUDA decode kernel is not available in this build yet "
        "(mla_plugin.dispatch.launch is a placeholder until the kernel lands)"
    )
