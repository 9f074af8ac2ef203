// Phase 3: sum the group's partial S (fixed order: bit-identical for every run), then the online
// softmax of the tile split by rows: warp k of a group owns rows [4k, 4k+4) of the m-tile, each
// lane 4 consecutive tokens of one row. P goes to shared memory as MMA elements, in the k order
// the P.V fragments read; alpha (the rescale of the row's running output) beside it.
#pragma once

#include <cfloat>

#include "../elem_ops.cuh"
#include "smem.cuh"

#ifndef MLA_MUTATE_P_DROP_BITS
#define MLA_MUTATE_P_DROP_BITS 0  // test-only (scripts/mutation_check.sh): truncate 16-bit P
#endif

namespace mla {

// Running max and sum of the row a lane's softmax owns (identical in the row's 8 lanes).
struct RowSoftmax {
  float m = -INFINITY;  // raw score units
  float l = 0.f;
};

template <class Cfg>
__device__ __forceinline__ uint8_t* p_row(uint8_t* smem, int mtile, int row) {
  return smem + Cfg::OFF_P + (mtile * 16 + row) * Cfg::P_ROW_BYTES;
}

// The row of the m-tile a lane's softmax owns, and its first token in the tile.
template <class Cfg>
__device__ __forceinline__ int softmax_row(int slice, int lane) {
  return slice * Cfg::ROWS_PER_SLICE + lane / Cfg::LANES_PER_ROW;
}
template <class Cfg>
__device__ __forceinline__ int softmax_col(int lane) {
  return Cfg::TOKENS_PER_LANE * (lane % Cfg::LANES_PER_ROW);
}

// 16-bit P of 4 consecutive tokens (col..col+3) of a row.
template <class Cfg>
__device__ __forceinline__ void store_p(uint8_t* row_ptr, int col, const float (&p)[4]) {
  if constexpr (Cfg::E4M3_MMA) {
    // e4m3 P (x 2^8) at k positions fp8_k_of_token(t): tokens col, col+1 land on k, k+1 and
    // col+2, col+3 on k+4, k+5 (col is a multiple of 4).
    using E = ElemOps<Elem::E4M3>;
    const int k = fp8_k_of_token(col);
    static_assert(fp8_k_of_token(2) == fp8_k_of_token(0) + 4 && fp8_k_of_token(6) == fp8_k_of_token(4) + 4,
                  "P pairs of an e4m3 lane");
    *reinterpret_cast<uint16_t*>(row_ptr + k) = E::pack2(p[0] * Cfg::P_E4M3_SCALE, p[1] * Cfg::P_E4M3_SCALE);
    *reinterpret_cast<uint16_t*>(row_ptr + k + 4) = E::pack2(p[2] * Cfg::P_E4M3_SCALE, p[3] * Cfg::P_E4M3_SCALE);
  } else {
    using E = ElemOps<Cfg::MMA>;
    uint32_t lo = E::pack2(p[0], p[1]), hi = E::pack2(p[2], p[3]);
#if MLA_MUTATE_P_DROP_BITS > 0
    constexpr uint32_t keep = (0xffffu & ~((1u << MLA_MUTATE_P_DROP_BITS) - 1u)) * 0x10001u;
    lo &= keep;
    hi &= keep;
#endif
    *reinterpret_cast<uint2*>(row_ptr + col * Cfg::MMA_BYTES) = make_uint2(lo, hi);
  }
}

// Exchange the partial S of a tile, run the owner rows' online softmax, publish P and alpha.
// `lim` / `scale`: the owned row's attention limit and softmax scale (log2 units).
template <class Cfg>
__device__ __forceinline__ void softmax_tile(uint8_t* smem, int warp, int mtile, int slice, int tok0, int lim,
                                             float scale, const float (&s)[Cfg::NTILES][4], RowSoftmax& st,
                                             uint32_t group_barrier) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, q4 = lane % 4;
  float* s_part = reinterpret_cast<float*>(smem + Cfg::OFF_S_PART);
  // Trap 9: C fragment (row g / g+8, columns 8j + 2q, +1) -> [row][token].
  float* mine = s_part + warp * (Cfg::S_PART_WARP_BYTES / 4);
#pragma unroll
  for (int j = 0; j < Cfg::NTILES; ++j) {
    *reinterpret_cast<float2*>(mine + g * Cfg::S_ROW_FLOATS + 8 * j + 2 * q4) = make_float2(s[j][0], s[j][1]);
    *reinterpret_cast<float2*>(mine + (g + 8) * Cfg::S_ROW_FLOATS + 8 * j + 2 * q4) = make_float2(s[j][2], s[j][3]);
  }
  named_barrier_sync(group_barrier, Cfg::SLICES * 32);

  const int row = softmax_row<Cfg>(slice, lane);
  const int col = softmax_col<Cfg>(lane);
  float v[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int k = 0; k < Cfg::SLICES; ++k) {
    const float4 t = *reinterpret_cast<const float4*>(
        s_part + ((mtile * Cfg::SLICES + k) * 16 + row) * Cfg::S_ROW_FLOATS + col);
    v[0] += t.x;
    v[1] += t.y;
    v[2] += t.z;
    v[3] += t.w;
  }
  if (tok0 + Cfg::TOKENS > lim) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (tok0 + col + e >= lim) v[e] = -INFINITY;  // select: masks garbage and NaN tokens too
  }
  float mx = fmaxf(st.m, fmaxf(fmaxf(v[0], v[1]), fmaxf(v[2], v[3])));
#pragma unroll
  for (int off = 1; off < Cfg::LANES_PER_ROW; off *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  // Lazy max (Cfg::RESCALE_SLACK_LOG2): the row's reference max moves only when the tile's max
  // passes it by more than the slack; then alpha is exactly 1. A row with no visible token yet
  // keeps m = -inf: exp2 then gets 0 (and alpha 1), not NaN.
  if (st.m != -INFINITY && (mx - st.m) * scale <= Cfg::RESCALE_SLACK_LOG2) mx = st.m;
  const float m_scaled = mx == -INFINITY ? 0.f : mx * scale;
  const float alpha = mx == st.m ? 1.f : fast_exp2((st.m - mx) * scale);
  st.m = mx;
  float p[4], sum = 0.f;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    p[e] = fast_exp2(fmaf(v[e], scale, -m_scaled));
    sum += p[e];
  }
#pragma unroll
  for (int off = 1; off < Cfg::LANES_PER_ROW; off *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  st.l = st.l * alpha + sum;
  store_p<Cfg>(p_row<Cfg>(smem, mtile, row), col, p);
  if (lane % Cfg::LANES_PER_ROW == 0) row_stats<Cfg>(smem).alpha[mtile * 16 + row] = alpha;
  named_barrier_sync(group_barrier, Cfg::SLICES * 32);
}

}  // namespace mla
