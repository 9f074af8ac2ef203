// Split-KV combine: merges the splits' normalised fp32 partial rows with their log2-sum-exp2
// weights into the output row and its natural-log LSE.
//
// One CTA = one output row x 512 / p.chunks channels. It first reads every split's lse at once
// (coalesced, a few per thread) and takes their max and weight sum, so the weights are known
// before any partial row is read; then its p.chunks groups of threads (128 / p.chunks each, a
// float4 of channels per thread) read the non-empty splits' rows, COMBINE_UNROLL independent
// loads in flight per thread, and merge through shared memory. The launcher picks p.chunks:
// 1 for many rows (one group walks the few splits), up to 8 for a few rows with many splits.
// Empty splits (lse -inf: the plan had more splits than the request needed) cost one
// shared-memory test, and splits the request's length never reached (counted the way the decode
// kernel's split_range counts them) none.
#pragma once

#include <cstdint>

#include "config.cuh"
#include "decode/geometry.cuh"
#include "elem_ops.cuh"
#include "params.h"
#include "ptx.cuh"

namespace mla {

constexpr int COMBINE_THREADS = 128;                 // = V_DIM / 4: a float4 of channels each
constexpr int COMBINE_MAX_CHUNKS = 8;
constexpr int COMBINE_UNROLL = 4;
constexpr int COMBINE_MAX_SPLITS = MAX_KV_SPLITS;  // the launcher refuses more
static_assert(COMBINE_THREADS * 4 == V_DIM, "one float4 per thread covers a row");
static_assert(COMBINE_MAX_SPLITS % COMBINE_THREADS == 0, "lse loads");

template <Elem OUT>
__global__ void __launch_bounds__(COMBINE_THREADS) mla_combine_kernel(const CombineParams p) {
  using OT = typename ElemOps<OUT>::storage;
  __shared__ float lse_s[COMBINE_MAX_SPLITS];
  __shared__ float red[COMBINE_THREADS / 32][2];
  __shared__ float4 red_acc[COMBINE_THREADS];

  const int row = blockIdx.x;  // = token * H + head
  const int chunk = blockIdx.y;
  const int tid = threadIdx.x;
  const int lanes = COMBINE_THREADS / p.chunks;  // threads per group = float4s per chunk
  const int group = tid / lanes;
  const int lane = tid % lanes;
  const int token = row / p.num_heads;
  const int head = row % p.num_heads;
  const int b = token / p.query_len;
  const int rg = (token % p.query_len) * p.num_heads + head;  // row inside the request
  const int row_tile = rg / p.rows_per_cta;
  const int row_in_tile = rg % p.rows_per_cta;
  const int channel = (chunk * lanes + lane) * 4;
  auto split_row = [&](int s) {
    return partial_row(b, row_tile, s, row_in_tile, p.row_tiles, p.num_splits, p.rows_per_cta);
  };

  // Only the splits split_range gave tokens can hold a partial: a plan made for max_model_len
  // has many more, and they cost nothing here.
  const int kv_len = max(0, min(__ldg(p.seq_lens + b), p.kv_capacity));
  const int splits = splits_with_tokens(
      ceil_div(kv_len, TILE_TOKENS), p.num_splits,
      balanced_min_tiles(p.seq_lens, p.batch, p.kv_capacity, TILE_TOKENS, p.min_tiles_per_split, p.split_budget));

  // Every split's lse, their max and the sum of the weights exp2(lse - max).
  float mx = -INFINITY;
  for (int s = tid; s < splits; s += COMBINE_THREADS) {
    const float v = p.partial_lse[split_row(s)];
    lse_s[s] = v;
    mx = fmaxf(mx, v);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if (tid % 32 == 0) red[tid / 32][0] = mx;
  __syncthreads();
  mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < COMBINE_THREADS / 32; ++w) mx = fmaxf(mx, red[w][0]);
  float total = 0.f;
  for (int s = tid; s < splits; s += COMBINE_THREADS)
    if (lse_s[s] != -INFINITY) total += exp2f(lse_s[s] - mx);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) total += __shfl_xor_sync(0xffffffffu, total, off);
  if (tid % 32 == 0) red[tid / 32][1] = total;

  // The weighted partial rows of this group's splits (group, group + chunks, ...).
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (mx != -INFINITY) {
    for (int s0 = group; s0 < splits; s0 += p.chunks * COMBINE_UNROLL) {
      float w[COMBINE_UNROLL];
      float4 v[COMBINE_UNROLL];
#pragma unroll
      for (int u = 0; u < COMBINE_UNROLL; ++u) {
        const int s = s0 + u * p.chunks;
        w[u] = 0.f;
        v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        // an empty split never wrote its partial row: read it only where its lse says it did
        if (s < splits && lse_s[s] != -INFINITY) {
          w[u] = exp2f(lse_s[s] - mx);
          v[u] = *reinterpret_cast<const float4*>(p.partial_out + split_row(s) * V_DIM + channel);
        }
      }
#pragma unroll
      for (int u = 0; u < COMBINE_UNROLL; ++u) {
        acc.x += w[u] * v[u].x;
        acc.y += w[u] * v[u].y;
        acc.z += w[u] * v[u].z;
        acc.w += w[u] * v[u].w;
      }
    }
  }
  red_acc[tid] = acc;
  __syncthreads();
  if (group != 0) return;

  total = 0.f;
#pragma unroll
  for (int w = 0; w < COMBINE_THREADS / 32; ++w) total += red[w][1];
  float4 o = acc;
  for (int k = 1; k < p.chunks; ++k) {  // fixed order: deterministic
    const float4 a = red_acc[k * lanes + lane];
    o.x += a.x;
    o.y += a.y;
    o.z += a.z;
    o.w += a.w;
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;
  OT* out = static_cast<OT*>(p.out) + static_cast<int64_t>(token) * p.out_stride_t +
            static_cast<int64_t>(head) * p.out_stride_h + channel;
  *reinterpret_cast<uint2*>(out) =
      make_uint2(ElemOps<OUT>::pack2(o.x * inv, o.y * inv), ElemOps<OUT>::pack2(o.z * inv, o.w * inv));
  if (chunk == 0 && lane == 0) p.lse[row] = total > 0.f ? (mx + __log2f(total)) * LN2 : -INFINITY;
}

}  // namespace mla
