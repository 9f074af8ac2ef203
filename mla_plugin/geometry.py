"""The MLA shape facts, one place for every Python module.

The kernel keeps its own copy in csrc/config.cuh (C++ cannot import this file);
tests/test_geometry.py reads config.cuh and fails when the two disagree. Plain Python:
no torch, no vLLM, so anything may import it.
"""

from __future__ import annotations

LATENT_DIM = 512  # kv_lora_rank: the compressed latent, K and V
ROPE_DIM = 64  # qk_rope_head_dim: the RoPE part, K only
HEAD_DIM = LATENT_DIM + ROPE_DIM  # 576: one KV token, and the query head size vLLM reports
V_DIM = LATENT_DIM  # output channels per head

MAX_HEADS = 128  # query heads per request the op takes
MAX_QUERY_LEN = 8  # query tokens per request (MTP / speculative decode: 7 draft tokens)
BLOCK_SIZES = (16, 32, 64, 128)  # kernel page sizes; vLLM block sizes are multiples of 16
MIN_BLOCK_SIZE = BLOCK_SIZES[0]

MAX_KV_SPLITS = 512  # KV splits per request the kernel's combine merges (plans stay below)
SMEM_BUDGET_BYTES = 101376  # SM12x: 99 KiB of shared memory per block, the kernel's budget everywhere
SM12X_SMEM_PER_SM = 102400  # SM12x: 100 KiB of shared memory per SM (two CTAs of <= 49 KiB share one)
SMEM_RESERVED_PER_CTA = 1024  # the driver's shared memory per CTA on sm_90+
ALIGN_BYTES = 16  # pointers and row strides the kernel reads with 16-byte accesses

# FLOPs per (query row, attended KV token): a 576-long q.k and a 512-long p.v multiply-add.
FLOP_PER_ROW_TOKEN = 2 * (HEAD_DIM + V_DIM)
