// MLA paged decode kernel: one CTA = one request x one tile of ROWS query rows x one KV split.
//
// Warps: CONSUMER_WARPS math warps in M_TILES groups of SLICES (one group per 16-row m-tile),
// and one producer warp that streams the split's KV through TMA into a ring of panels (TOKENS
// tokens x 64 channels each, 9 panels per tile). K and V share the tile: the first 8 panels
// serve both products (loaded once). Per CTA the math warps
//   1. stage Q in shared memory and keep their A fragments in registers (q_load.cuh),
// then per KV tile
//   2. compute a partial S = Q K^T over their k-steps (scores.cuh),
//   3. exchange the partials; each warp runs the online softmax of 4 of the 16 rows and
//      publishes P and alpha in shared memory (softmax.cuh),
//   4. compute O = alpha O + P V over their 128 output columns (pv.cuh),
// and finally normalise and store O and the LSE, or the split's partials (epilogue.cuh): to the
// workspace for the combine kernel, or, in a cluster launch, to shared memory, where the
// cluster's splits merge them (cluster_merge.cuh).
// csrc/README.md describes the design and what was measured.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "../config.cuh"
#include "../params.h"
#include "../ptx.cuh"
#include "cluster_merge.cuh"
#include "epilogue.cuh"
#include "geometry.cuh"
#include "producer.cuh"
#include "pv.cuh"
#include "q_load.cuh"
#include "scores.cuh"
#include "smem.cuh"
#include "softmax.cuh"

namespace mla {

// CLUSTER: the launch is a cluster per (request, row tile) whose splits merge in shared memory
// (a separate instantiation: the plain kernel's code is then exactly the one measured without it).
// BALANCED: length-balanced splits (p.split_budget > 0): blockIdx.y is a slot of the batch's
// splits laid end to end (balanced_slot in geometry.cuh), merged by the combine kernel. Also a
// separate instantiation: in the plain kernel the slot search cost 1.5-2% (its tile loop was
// scheduled differently).
template <class Cfg, bool CLUSTER, bool BALANCED>
__global__ void __launch_bounds__(Cfg::THREADS) __maxnreg__(Cfg::MAX_REGISTERS)
    mla_decode_kernel(const __grid_constant__ CUtensorMap kv_map, const DecodeParams p) {
  static_assert(!(CLUSTER && BALANCED), "balanced splits merge by the combine kernel");
  extern __shared__ __align__(1024) uint8_t smem[];

  const int row_tile = blockIdx.x;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int kv_capacity = p.max_blocks * p.block_size;
  const BalancedSlot slot =
      BALANCED ? balanced_slot(p.seq_lens, p.batch, kv_capacity, Cfg::TOKENS, p.min_tiles_per_split, p.split_budget,
                               p.num_splits, blockIdx.y)
               : BalancedSlot{static_cast<int>(blockIdx.z), static_cast<int>(blockIdx.y), p.min_tiles_per_split};
  if (BALANCED && slot.b < 0) return;  // a slot past the last request's splits
  const int split = slot.split;
  const int b = slot.b;

  // The math warps read their q first: that read then overlaps the seq_lens read below instead
  // of waiting for it (the producer warp reads no q).
  const RowIndex rows{row_tile, p.rows_per_request, p.num_heads, p.query_len};
  QUnits<Cfg> q_units{};
  if (warp < Cfg::CONSUMER_WARPS) q_units = load_q_units<Cfg>(p, b, rows);

  const int seq_len = __ldg(p.seq_lens + b);
  const int kv_len = max(0, min(seq_len, kv_capacity));
  const SplitRange range = split_range(ceil_div(kv_len, Cfg::TOKENS), p.num_splits, slot.min_tiles, split);
  const RowGeometry geo{rows, seq_len, kv_len, p.causal != 0};

  if (range.empty()) {  // no tokens: no barrier, no load
    if constexpr (CLUSTER) {
      // The others know this split is empty (split_range gives tokens to a prefix of the splits)
      // and read nothing of it; but where no split has tokens, split 0 writes the empty rows.
      if (warp < Cfg::CONSUMER_WARPS && split == 0) write_empty_rows<Cfg, RowsTo::OUT>(p, b, geo, split);
    } else {
      if (warp < Cfg::CONSUMER_WARPS) write_empty_rows<Cfg>(p, b, geo, split);
    }
    return;
  }

  const RingBarriers<Cfg> bars(smem);
  if (threadIdx.x == Cfg::CONSUMER_THREADS) {
    if (smem_addr(smem) % 1024 != 0) __trap();  // the swizzle formulas assume it
    for (int i = 0; i < Cfg::RING; ++i) {
      mbar_init(bars.full(i), 1);
      mbar_init(bars.empty(i), Cfg::CONSUMER_WARPS);
    }
    mbar_init(bars.q_free, Cfg::CONSUMER_WARPS);
    fence_barrier_init();
  }
  __syncthreads();

  if (warp == Cfg::PRODUCER_WARP) {
    produce<Cfg>(&kv_map, p, smem, b, kv_len, range);
    return;
  }

  // ---------------------------------------------------------------- math warps
  const float kv_scale = p.kv_scale_ptr ? __ldg(p.kv_scale_ptr) : p.kv_scale;
  stage_q<Cfg>(p, smem, q_units, kv_scale);
  named_barrier_sync(BARRIER_CONSUMERS, Cfg::CONSUMER_THREADS);

  const int mtile = static_cast<unsigned>(warp) / Cfg::SLICES;  // this warp's 16 rows
  const int slice = static_cast<unsigned>(warp) % Cfg::SLICES;  // its k-steps, softmax rows, V columns
  const uint32_t group_barrier = BARRIER_GROUP0 + mtile;
  uint32_t qf[Cfg::S_KSTEPS_MAX][4];
  if constexpr (Cfg::Q_IN_REGISTERS) load_q_fragments<Cfg>(smem, mtile, slice, qf);
  __syncwarp();
  if (lane == 0) mbar_arrive(bars.q_free);  // the staging area may now take KV panels
  // Q staged over the S partials and P (a ring of two tiles): every warp has copied its Q out
  // before any writes its first partial.
  if constexpr (Cfg::Q_OVER_SCRATCH) named_barrier_sync(BARRIER_CONSUMERS, Cfg::CONSUMER_THREADS);

  const uint32_t kv_smem = smem_addr(smem + Cfg::OFF_KV);
  const int pv_panel0 = slice * Cfg::V_COLS_PER_WARP / PANEL_CHANNELS;
  auto release = [&](const RingPosition<Cfg>& ring, int pn) {
    __syncwarp();
    if (lane == 0) mbar_arrive(bars.empty(ring.slot_of(pn)));
  };

  float acc[Cfg::PV_NTILES][4];
#pragma unroll
  for (int nt = 0; nt < Cfg::PV_NTILES; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
  const RowStats stats = row_stats<Cfg>(smem);

  // The row this lane's softmax owns.
  const int own_row = mtile * 16 + softmax_row<Cfg>(slice, lane);
  const int own_limit = geo.limit(own_row, Cfg::ROWS);
  const float own_scale = stats.scale[own_row];
  const int g = lane / 4;
  RowSoftmax st;
  // Cfg::PER_PANEL: a wait and a release per panel (S-only panels released early); else (a ring
  // of whole tiles: FP8 on 16-bit MMAs, every page size) one wait (panel 0's full barrier, which
  // all the tile's boxes complete on) and one release (panel 0's empty barrier, which the producer
  // waits on) per tile. A compile-time fact of the variant: a runtime flag put a branch between
  // the S loop's k-steps, and no shared-memory load was hoisted across it. (The lambda keeps the
  // SASS that was measured: the same loop written straight into the kernel body compiles
  // differently.)
  auto tile_loop = [&]() {
    RingPosition<Cfg> ring;
    for (int tile = range.begin; tile < range.end; ++tile) {
      const int tok0 = tile * Cfg::TOKENS;
      float s[Cfg::NTILES][4];
      partial_scores<Cfg>(smem, kv_smem, bars, ring, mtile, slice, qf, s);
      if constexpr (Cfg::PER_PANEL) {
#pragma unroll
        for (int pn = 0; pn < NUM_PANELS; ++pn)
          if (pn < pv_panel0 || pn >= pv_panel0 + Cfg::PV_PANELS_PER_WARP) release(ring, pn);
      }
      softmax_tile<Cfg>(smem, warp, mtile, slice, tok0, own_limit, own_scale, s, st, group_barrier);
      rescale_output<Cfg>(acc, stats.alpha[mtile * 16 + g], stats.alpha[mtile * 16 + g + 8]);
      pv_tile<Cfg>(kv_smem, bars, ring, slice, tok0, kv_len,
                   [&](int ks, uint32_t(&a)[4]) { p_fragment<Cfg>(smem, mtile, ks, a); }, acc);
      if constexpr (Cfg::PER_PANEL) {
#pragma unroll
        for (int i = 0; i < Cfg::PV_PANELS_PER_WARP; ++i) release(ring, pv_panel0 + i);
      } else {
        release(ring, 0);
      }
      ring.next_tile();
    }
  };
  tile_loop();
  if constexpr (CLUSTER) {
    // The splits with tokens (a prefix), worked out only now: nothing of it stays live in the loop.
    const int active = splits_with_tokens(ceil_div(kv_len, Cfg::TOKENS), p.num_splits, p.min_tiles_per_split);
    if (active > 1) {
      epilogue<Cfg, RowsTo::RING>(p, smem, b, split, geo, mtile, slice, st, kv_scale, acc, group_barrier);
      cluster_merge<Cfg>(p, smem, b, geo, split, active);
    } else {  // split 0 alone has tokens: its rows are the output
      epilogue<Cfg, RowsTo::OUT>(p, smem, b, split, geo, mtile, slice, st, kv_scale, acc, group_barrier);
    }
  } else {
    epilogue<Cfg>(p, smem, b, split, geo, mtile, slice, st, kv_scale, acc, group_barrier);
  }
}

}  // namespace mla
