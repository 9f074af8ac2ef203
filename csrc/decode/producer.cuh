// The producer warp: one lane walks the split's tiles and issues one TMA box per (panel, page)
// into the ring of PANEL_BYTES slots; the whole warp reads the next tile's page ids ahead.
#pragma once

#include <cuda.h>

#include "../params.h"
#include "geometry.cuh"
#include "smem.cuh"

namespace mla {

template <class Cfg>
__device__ __forceinline__ void produce(const CUtensorMap* kv_map, const DecodeParams& p, uint8_t* smem, int b,
                                        int kv_len, SplitRange range) {
  const int lane = threadIdx.x % 32;
  const uint32_t kv_smem = smem_addr(smem + Cfg::OFF_KV);
  const RingBarriers<Cfg> bars(smem);
  const int bs = p.block_size;
  const bool tile_in_one_page = bs >= Cfg::TOKENS;
  const int pages_per_tile = tile_in_one_page ? 1 : Cfg::TOKENS / bs;
  const int box_tokens = tile_in_one_page ? Cfg::TOKENS : bs;
  const uint32_t box_bytes = static_cast<uint32_t>(box_tokens * Cfg::ROW_BYTES);
  const int32_t* table = p.block_table + static_cast<int64_t>(b) * p.block_table_stride;

  // Lane j holds page j of a tile; pages at or past kv_len are garbage and never read.
  auto load_pages = [&](int tile) -> int {
    const int first_token = tile * Cfg::TOKENS + lane * bs;
    if (lane >= pages_per_tile || first_token >= kv_len) return 0;
    return __ldg(table + first_token / bs);
  };
  if (lane == 0) tma_prefetch_descriptor(kv_map);
  int pages_next = load_pages(range.begin);
  uint32_t slot = 0, phase = 0;
  bool q_released = false;  // the slots from Q_FIRST_SLOT on hold the Q staging until then
  for (int tile = range.begin; tile < range.end; ++tile) {
    const int pages_cur = pages_next;
    if (tile + 1 < range.end) pages_next = load_pages(tile + 1);  // hide the table read
    const int tok0 = tile * Cfg::TOKENS;
    const int boxes = tile_in_one_page ? 1 : min(pages_per_tile, ceil_div(kv_len - tok0, bs));
    const int in_page = tile_in_one_page ? tok0 % bs : 0;
    int page[Cfg::MAX_PAGES_PER_TILE];
#pragma unroll
    for (int j = 0; j < Cfg::MAX_PAGES_PER_TILE; ++j) page[j] = __shfl_sync(0xffffffffu, pages_cur, j);
    if (lane == 0) {
      for (int pn = 0; pn < NUM_PANELS; ++pn) {
        if (!q_released && slot >= Cfg::Q_FIRST_SLOT) {
          mbar_wait(bars.q_free, 0);
          q_released = true;
        }
        mbar_wait(bars.empty(slot), phase ^ 1);
        mbar_arrive_expect_tx(bars.full(slot), boxes * box_bytes);
#pragma unroll
        for (int j = 0; j < Cfg::MAX_PAGES_PER_TILE; ++j) {
          if (j < boxes)
            tma_load_3d(kv_smem + slot * Cfg::PANEL_BYTES + j * box_bytes, kv_map, bars.full(slot),
                        pn * PANEL_CHANNELS, in_page, page[j]);
        }
        if (++slot == Cfg::RING) {
          slot = 0;
          phase ^= 1;
        }
      }
    }
    __syncwarp();  // the page shuffles above need the whole warp each tile
  }
}

}  // namespace mla
