// Kernel parameters shared by the launcher (host) and the kernels (device). Plain C++ only.
#pragma once

#include <cstdint>

namespace mla {

struct DecodeParams {
  // q as two views (latent part and RoPE part); strides in elements, last dim contiguous.
  const void* q_nope;
  const void* q_pe;
  int64_t q_nope_stride_t, q_nope_stride_h;
  int64_t q_pe_stride_t, q_pe_stride_h;
  // out [T, H, 512] (strides in elements), lse [T, H] float32 contiguous, natural log.
  void* out;
  int64_t out_stride_t, out_stride_h;
  float* lse;
  // Paged KV addressing (the KV data itself comes through the tensor map).
  const int32_t* block_table;
  int64_t block_table_stride;
  const int32_t* seq_lens;
  int block_size;
  int max_blocks;  // block_table width: the kernel never reads past it
  // Split-KV workspace (fp32 partial outputs and log2-sum-exp2 per split), unused when splits == 1.
  float* partial_out;
  float* partial_lse;
  int num_splits;
  int min_tiles_per_split;  // a split takes at least this many KV tiles of the real length
  int split_budget;         // > 0: splits balanced over the batch's lengths (balanced_min_tiles)
  // Scales: a device pointer wins over the value (vLLM keeps layer._k_scale on the GPU).
  const float* kv_scale_ptr;
  const float* q_scale_ptr;
  float kv_scale;
  float q_scale;
  float softmax_scale_log2;  // softmax_scale * log2(e): the kernel works in exp2
  int num_heads;
  int query_len;
  int causal;
  int batch;
  int rows_per_request;  // query_len * num_heads
  int row_tiles;         // ceil(rows_per_request / rows per CTA)
};

struct CombineParams {
  const float* partial_out;
  const float* partial_lse;
  void* out;
  int64_t out_stride_t, out_stride_h;
  float* lse;
  int num_heads, query_len, num_rows_total;  // num_rows_total = T * H
  int rows_per_cta, row_tiles, num_splits;
  int chunks;  // channel chunks per row (CTAs per output row), 1..COMBINE_MAX_CHUNKS
  // To count the splits the decode kernel gave tokens (split_range): the rest wrote nothing.
  const int32_t* seq_lens;
  int kv_capacity;  // block_table width x block_size
  int min_tiles_per_split;
  int split_budget;
  int batch;
};

}  // namespace mla
