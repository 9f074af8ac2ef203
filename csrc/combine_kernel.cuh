// Split-KV combine: one warp per (token, head) row merges the splits' normalised partial
// outputs with their log2-sum-exp2 weights and writes the output row and its natural-log LSE.
#pragma once

#include <cstdint>

#include "config.cuh"
#include "elem_ops.cuh"
#include "params.h"

namespace mla {

constexpr int COMBINE_WARPS = 4;

template <Elem OUT>
__global__ void __launch_bounds__(COMBINE_WARPS * 32)
    mla_combine_kernel(const CombineParams p) {
  constexpr float LN2_F = 0.6931471805599453f;
  constexpr int CH_PER_LANE = V_DIM / 32;
  static_assert(CH_PER_LANE % 4 == 0, "float4 loads");
  using OT = typename ElemOps<OUT>::storage;

  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * COMBINE_WARPS + threadIdx.x / 32;  // = token * H + head
  if (row >= p.num_rows_total) return;
  const int token = row / p.num_heads;
  const int head = row % p.num_heads;
  const int b = token / p.query_len;
  const int rg = (token % p.query_len) * p.num_heads + head;  // row inside the request
  const int64_t first = (static_cast<int64_t>(b) * p.row_tiles + rg / p.rows_per_cta) * p.num_splits *
                            p.rows_per_cta +
                        rg % p.rows_per_cta;
  auto split_row = [&](int s) { return first + static_cast<int64_t>(s) * p.rows_per_cta; };

  float m = -INFINITY;
  for (int s = lane; s < p.num_splits; s += 32) m = fmaxf(m, p.partial_lse[split_row(s)]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));

  float acc[CH_PER_LANE];
#pragma unroll
  for (int i = 0; i < CH_PER_LANE; ++i) acc[i] = 0.f;
  float total = 0.f;
  if (m != -INFINITY) {
    for (int s = 0; s < p.num_splits; ++s) {
      const float lse = p.partial_lse[split_row(s)];
      if (lse == -INFINITY) continue;  // empty split: its partial output was never written
      const float w = exp2f(lse - m);
      total += w;
      const float4* src =
          reinterpret_cast<const float4*>(p.partial_out + split_row(s) * V_DIM + lane * CH_PER_LANE);
#pragma unroll
      for (int i = 0; i < CH_PER_LANE / 4; ++i) {
        const float4 v = src[i];
        acc[4 * i] += w * v.x;
        acc[4 * i + 1] += w * v.y;
        acc[4 * i + 2] += w * v.z;
        acc[4 * i + 3] += w * v.w;
      }
    }
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;
  OT* out = static_cast<OT*>(p.out) + static_cast<int64_t>(token) * p.out_stride_t +
            static_cast<int64_t>(head) * p.out_stride_h + lane * CH_PER_LANE;
  uint32_t packed[CH_PER_LANE / 2];
#pragma unroll
  for (int i = 0; i < CH_PER_LANE / 2; ++i)
    packed[i] = ElemOps<OUT>::pack2(acc[2 * i] * inv, acc[2 * i + 1] * inv);
#pragma unroll
  for (int i = 0; i < CH_PER_LANE / 8; ++i)
    reinterpret_cast<uint4*>(out)[i] =
        make_uint4(packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]);
  if (lane == 0) p.lse[row] = total > 0.f ? (m + __log2f(total)) * LN2_F : -INFINITY;
}

}  // namespace mla
