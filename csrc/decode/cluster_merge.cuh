// Phase 6 (cluster launches only): the splits of one (request, row tile) are one thread block
// cluster, and merge their partial rows through distributed shared memory instead of the
// workspace and the combine kernel. Each split that found tokens has written its normalised fp32
// partial rows and their log2-sum-exp2 into its drained ring (epilogue.cuh, RowsTo::RING). After
// one cluster barrier, CTA r of the `active` splits with tokens merges the blocks r, r + active,
// ... of CONSUMER_THREADS (row, 4-channel) units: each thread reads every split's lse of its rows
// and their 4 channels, two units to a round of loads, weights exp2(lse_s - max) / sum, the
// splits added in split order (deterministic), straight into out, with the row's natural-log
// LSE. A second cluster barrier keeps every CTA's shared memory alive until its peers have read
// it. Splits without tokens exit at once (split_range gives tokens to a prefix of the splits, so
// the others know which they are, and the cluster barrier waits only for threads that have not
// exited).
#pragma once

#include "../elem_ops.cuh"
#include "../params.h"
#include "../ptx.cuh"
#include "geometry.cuh"

namespace mla {

template <class Cfg>
__device__ __forceinline__ void cluster_merge(const DecodeParams& p, uint8_t* smem, int b, const RowGeometry& geo,
                                              int rank, int active) {
  static_assert(Cfg::CLUSTER_MERGE, "the host launches clusters only where the ring holds the merge");
  using OT = typename ElemOps<Cfg::OUT>::storage;
  constexpr int T = Cfg::CONSUMER_THREADS;
  constexpr int ROWS = Cfg::ROWS;
  constexpr int COLS4 = V_DIM / 4;
  constexpr int BATCH = 2;  // units whose loads are all in flight at once
  const float* lse_local = reinterpret_cast<const float*>(smem + Cfg::OFF_MERGE_LSE);
  const float4* o_local = reinterpret_cast<const float4*>(smem + Cfg::OFF_MERGE_O);
  const float* peer_lse[MAX_CLUSTER_SPLITS];
  const float4* peer_o[MAX_CLUSTER_SPLITS];
#pragma unroll
  for (int s = 0; s < MAX_CLUSTER_SPLITS; ++s) {
    peer_lse[s] = map_shared_rank(lse_local, s < active ? s : 0);
    peer_o[s] = map_shared_rank(o_local, s < active ? s : 0);
  }

  if (cluster_ctarank() != static_cast<uint32_t>(rank)) __trap();  // the launch's cluster shape is (1, num_splits, 1)
  cluster_sync();  // every split's partial rows are in its shared memory

  // BATCH units per round of remote loads: every split's lse of the row and its 4 channels (a
  // split whose lse is -inf has zeros there: its weight is 0). The weights are worked out per thread.
  const int stride = active * T;
  for (int u0 = rank * T + static_cast<int>(threadIdx.x); u0 < ROWS * COLS4; u0 += BATCH * stride) {
    float lse[BATCH][MAX_CLUSTER_SPLITS];
    float4 v[BATCH][MAX_CLUSTER_SPLITS];
#pragma unroll
    for (int k = 0; k < BATCH; ++k) {
      const int u = u0 + k * stride;
      const int row = u / COLS4, c4 = u % COLS4;
#pragma unroll
      for (int s = 0; s < MAX_CLUSTER_SPLITS; ++s) {
        const bool load = s < active && u < ROWS * COLS4;
        lse[k][s] = load ? peer_lse[s][row] : -INFINITY;
        v[k][s] = load ? peer_o[s][row * (Cfg::MERGE_ROW_FLOATS / 4) + c4] : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
#pragma unroll
    for (int k = 0; k < BATCH; ++k) {
      const int u = u0 + k * stride;
      const int row = u / COLS4, c4 = u % COLS4;
      float mx = -INFINITY;
#pragma unroll
      for (int s = 0; s < MAX_CLUSTER_SPLITS; ++s) mx = fmaxf(mx, lse[k][s]);
      float total = 0.f;
      float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int s = 0; s < MAX_CLUSTER_SPLITS; ++s) {  // split order: deterministic
        const float w = lse[k][s] != -INFINITY ? exp2f(lse[k][s] - mx) : 0.f;
        total += w;
        o.x += w * v[k][s].x;
        o.y += w * v[k][s].y;
        o.z += w * v[k][s].z;
        o.w += w * v[k][s].w;
      }
      if (u >= ROWS * COLS4 || !geo.valid(row, ROWS)) continue;
      const float inv = total > 0.f ? 1.f / total : 0.f;
      const int64_t token = geo.token(b, row, ROWS);
      const int head = geo.head(row, ROWS);
      OT* out = static_cast<OT*>(p.out) + token * p.out_stride_t + head * p.out_stride_h + 4 * c4;
      *reinterpret_cast<uint2*>(out) = make_uint2(ElemOps<Cfg::OUT>::pack2(o.x * inv, o.y * inv),
                                                  ElemOps<Cfg::OUT>::pack2(o.z * inv, o.w * inv));
      if (c4 == 0) p.lse[token * p.num_heads + head] = total > 0.f ? (mx + __log2f(total)) * LN2 : -INFINITY;
    }
  }

  cluster_sync();  // no CTA leaves while a peer may still read its shared memory
}

}  // namespace mla
