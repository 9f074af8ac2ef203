// Phase 5: normalise and store. Without splits the CTA writes its rows of out (and the natural-log
// LSE); with splits it writes fp32 partial rows and their log2-sum-exp2 to the workspace for the
// combine, or (a cluster launch) into its drained ring for the cluster's merge
// (cluster_merge.cuh). Also the rows of a split that found no tokens.
#pragma once

#include "../elem_ops.cuh"
#include "../params.h"
#include "geometry.cuh"
#include "smem.cuh"
#include "softmax.cuh"

#ifndef MLA_MUTATE_OUT_SCALE_ULPS
#define MLA_MUTATE_OUT_SCALE_ULPS 0  // test-only (scripts/mutation_check.sh): out *= 1 + N * 2^-9
#endif

namespace mla {

// Where a CTA's rows go: by the launch's split count (out, or the workspace for the combine
// kernel), to out whatever the split count (a cluster whose split 0 alone has tokens), or into
// the ring for the cluster's merge (cluster_merge.cuh).
enum class RowsTo { BY_SPLITS, OUT, RING };

// A split with no KV tile: its partial rows read -inf (the combine skips them); without splits
// (or RowsTo::OUT: a cluster none of whose splits has tokens), zeros and -inf in out / lse so
// nothing reads garbage.
template <class Cfg, RowsTo TO = RowsTo::BY_SPLITS>
__device__ void write_empty_rows(const DecodeParams& p, int b, const RowGeometry& geo, int split) {
  static_assert(TO != RowsTo::RING, "an empty split writes nothing into its ring");
  using OT = typename ElemOps<Cfg::OUT>::storage;
  for (int i = threadIdx.x; i < Cfg::ROWS; i += Cfg::CONSUMER_THREADS) {
    if (TO == RowsTo::BY_SPLITS && p.num_splits > 1) {
      p.partial_lse[partial_row(b, geo.row_tile, split, i, p.row_tiles, p.num_splits, Cfg::ROWS)] = -INFINITY;
    } else if (geo.valid(i, Cfg::ROWS)) {
      p.lse[geo.token(b, i, Cfg::ROWS) * p.num_heads + geo.head(i, Cfg::ROWS)] = -INFINITY;
    }
  }
  if (TO == RowsTo::BY_SPLITS && p.num_splits > 1) return;
  // Zero the output rows: 512 channels of 2 bytes each, 16 bytes per store.
  constexpr int VEC = 8;
  for (int i = threadIdx.x; i < Cfg::ROWS * (V_DIM / VEC); i += Cfg::CONSUMER_THREADS) {
    const int row = i / (V_DIM / VEC);
    if (!geo.valid(row, Cfg::ROWS)) continue;
    OT* dst = static_cast<OT*>(p.out) + geo.token(b, row, Cfg::ROWS) * p.out_stride_t +
              geo.head(row, Cfg::ROWS) * p.out_stride_h + (i % (V_DIM / VEC)) * VEC;
    *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
  }
}

// Where a row's log2-sum-exp2 goes: its split's partial (the workspace, or the merge's lse in
// shared memory), or (natural log) the output lse.
template <class Cfg, RowsTo TO = RowsTo::BY_SPLITS>
__device__ __forceinline__ void store_lse(const DecodeParams& p, uint8_t* smem, int b, int split,
                                          const RowGeometry& geo, int row, float m, float l, float scale) {
  const float lse2 = l > 0.f ? m * scale + __log2f(l) : -INFINITY;
  if constexpr (TO == RowsTo::RING)
    reinterpret_cast<float*>(smem + Cfg::OFF_MERGE_LSE)[row] = lse2;
  else if (TO == RowsTo::BY_SPLITS && p.num_splits > 1)
    p.partial_lse[partial_row(b, geo.row_tile, split, row, p.row_tiles, p.num_splits, Cfg::ROWS)] = lse2;
  else if (geo.valid(row, Cfg::ROWS))
    p.lse[geo.token(b, row, Cfg::ROWS) * p.num_heads + geo.head(row, Cfg::ROWS)] = lse2 * LN2;
}

// The thread's output rows g and g + 8 of its m-tile, its V_COLS_PER_WARP columns, divided by
// the rows' sums l[0], l[1]: to out, or to the split's fp32 partial rows.
template <class Cfg, RowsTo TO = RowsTo::BY_SPLITS>
__device__ __forceinline__ void store_output(const DecodeParams& p, uint8_t* smem, int b, int split,
                                             const RowGeometry& geo, int mtile, int slice, const float (&l)[2],
                                             float kv_scale, const float (&acc)[Cfg::PV_NTILES][4]) {
  using OT = typename ElemOps<Cfg::OUT>::storage;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, q4 = lane % 4;
  const bool split_mode = TO == RowsTo::RING || (TO == RowsTo::BY_SPLITS && p.num_splits > 1);
  // FP8: acc = sum p * v_e4m3 (x 2^8 for e4m3 P), so one factor restores kv_scale and the P scale.
  float out_factor = Cfg::FP8_CACHE ? kv_scale / (Cfg::E4M3_MMA ? Cfg::P_E4M3_SCALE : 1.f) : 1.f;
#if MLA_MUTATE_OUT_SCALE_ULPS != 0
  out_factor *= 1.f + MLA_MUTATE_OUT_SCALE_ULPS * 0.001953125f;
#endif
  const int col0 = slice * Cfg::V_COLS_PER_WARP;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int row = mtile * 16 + g + 8 * hh;
    const float inv = l[hh] > 0.f ? out_factor / l[hh] : 0.f;
    if (!geo.valid(row, Cfg::ROWS) && !split_mode) continue;
    float* part;
    if constexpr (TO == RowsTo::RING)
      part = reinterpret_cast<float*>(smem + Cfg::OFF_MERGE_O) + row * Cfg::MERGE_ROW_FLOATS;
    else
      part = split_mode ? p.partial_out +
                              partial_row(b, geo.row_tile, split, row, p.row_tiles, p.num_splits, Cfg::ROWS) * V_DIM
                        : nullptr;
    OT* out = split_mode ? nullptr
                         : static_cast<OT*>(p.out) + geo.token(b, row, Cfg::ROWS) * p.out_stride_t +
                               geo.head(row, Cfg::ROWS) * p.out_stride_h;
#pragma unroll
    for (int gi = 0; gi < Cfg::PV_GROUPS; ++gi) {
      const float* ev = acc[2 * gi];
      const float* od = acc[2 * gi + 1];
      int ch[2];  // this thread's output channels, as two pairs
      float v[2][2];
      if constexpr (Cfg::FP8_CACHE) {
        // even tile n -> channel 2n, odd tile n -> 2n + 1: four consecutive channels
        ch[0] = col0 + 16 * gi + 4 * q4;
        ch[1] = ch[0] + 2;
        v[0][0] = ev[2 * hh] * inv;
        v[0][1] = od[2 * hh] * inv;
        v[1][0] = ev[2 * hh + 1] * inv;
        v[1][1] = od[2 * hh + 1] * inv;
      } else {
        ch[0] = col0 + 16 * gi + 2 * q4;
        ch[1] = ch[0] + 8;
        v[0][0] = ev[2 * hh] * inv;
        v[0][1] = ev[2 * hh + 1] * inv;
        v[1][0] = od[2 * hh] * inv;
        v[1][1] = od[2 * hh + 1] * inv;
      }
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if (split_mode)
          *reinterpret_cast<float2*>(part + ch[k]) = make_float2(v[k][0], v[k][1]);
        else
          *reinterpret_cast<uint32_t*>(out + ch[k]) = ElemOps<Cfg::OUT>::pack2(v[k][0], v[k][1]);
      }
    }
  }
}

// The softmax owners publish m and l (and write the LSE); everyone then stores. Into the ring
// only once every math warp is done with its last tile.
template <class Cfg, RowsTo TO = RowsTo::BY_SPLITS>
__device__ __forceinline__ void epilogue(const DecodeParams& p, uint8_t* smem, int b, int split,
                                         const RowGeometry& geo, int mtile, int slice, const RowSoftmax& st,
                                         float kv_scale, const float (&acc)[Cfg::PV_NTILES][4],
                                         uint32_t group_barrier) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const RowStats stats = row_stats<Cfg>(smem);
  const int own_row = mtile * 16 + softmax_row<Cfg>(slice, lane);
  const bool owner = lane % Cfg::LANES_PER_ROW == 0;
  if (owner) {
    stats.m[own_row] = st.m;
    stats.l[own_row] = st.l;
    if constexpr (TO != RowsTo::RING) store_lse<Cfg, TO>(p, smem, b, split, geo, own_row, st.m, st.l, stats.scale[own_row]);
  }
  if constexpr (TO == RowsTo::RING) {
    named_barrier_sync(BARRIER_CONSUMERS, Cfg::CONSUMER_THREADS);
    if (owner) store_lse<Cfg, TO>(p, smem, b, split, geo, own_row, st.m, st.l, stats.scale[own_row]);
  } else {
    named_barrier_sync(group_barrier, Cfg::SLICES * 32);
  }
  const float l[2] = {stats.l[mtile * 16 + g], stats.l[mtile * 16 + g + 8]};
  store_output<Cfg, TO>(p, smem, b, split, geo, mtile, slice, l, kv_scale, acc);
}

}  // namespace mla
