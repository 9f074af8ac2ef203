// The producer warp: one lane walks the split's tiles and issues one TMA box per (panel, page)
// into the ring of PANEL_BYTES slots, each panel on its own barrier; or, where the ring holds
// whole tiles (FP8 on 16-bit MMAs), a tile's boxes on one barrier: one box per tile
// (whole_tile_box: pages of >= 32 tokens) or one per (panel, page). The whole warp keeps a
// window of the split's page ids.
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
  const bool whole_tile = whole_tile_box(Cfg::KV, Cfg::MMA, bs);  // the tensor map is 4-D (launch.cu)

  // The split's page ids, read a window ahead: lane j holds page `base + j` (cur) and
  // `base + 32 + j` (nxt). A tile takes its pages by shuffle; when it starts past cur the window
  // moves by 32 pages, so a table read has 32 pages of TMA issue to land in (the one-tile
  // look-ahead it replaced measured the same with 9 boxes per tile; with one box per tile the
  // loop is short enough for the read to show). Pages at or past kv_len are garbage, never read.
  constexpr int WINDOW = 32;
  auto read_page = [&](int page_index) -> int { return page_index * bs < kv_len ? __ldg(table + page_index) : 0; };
  if (lane == 0) tma_prefetch_descriptor(kv_map);
  int base = range.begin * Cfg::TOKENS / bs;
  int cur = read_page(base + lane);
  int nxt = read_page(base + WINDOW + lane);
  uint32_t slot = 0, phase = 0;
  bool q_released = false;  // the slots from Q_FIRST_SLOT on hold the Q staging until then
  for (int tile = range.begin; tile < range.end; ++tile) {
    const int tok0 = tile * Cfg::TOKENS;
    const int boxes = tile_in_one_page ? 1 : min(pages_per_tile, ceil_div(kv_len - tok0, bs));
    const int in_page = tile_in_one_page ? tok0 % bs : 0;
    const int first_page = tok0 / bs;
    while (first_page >= base + WINDOW) {  // warp-uniform
      cur = nxt;
      base += WINDOW;
      nxt = read_page(base + WINDOW + lane);
    }
    static_assert(Cfg::MAX_PAGES_PER_TILE <= WINDOW, "a tile's pages lie in cur and nxt");
    int page[Cfg::MAX_PAGES_PER_TILE];
#pragma unroll
    for (int j = 0; j < Cfg::MAX_PAGES_PER_TILE; ++j) {
      const int rel = first_page + j - base;  // < 2 * WINDOW
      const int from_cur = __shfl_sync(0xffffffffu, cur, rel % WINDOW);
      const int from_nxt = __shfl_sync(0xffffffffu, nxt, rel % WINDOW);
      page[j] = rel < WINDOW ? from_cur : from_nxt;
    }
    if (!Cfg::PER_PANEL && lane == 0) {
      // The tile's boxes, counted on panel 0's full barrier: one for its 9 panels (a 4-D map), or
      // one per (panel, page) where pages are shorter than the tile. The math warps wait for
      // panel 0's barrier alone and release the whole tile on panel 0's empty barrier (the other
      // panels' barriers stay unused).
      if (!q_released && slot + NUM_PANELS > Cfg::Q_FIRST_SLOT) {
        mbar_wait(bars.q_free, 0);
        q_released = true;
      }
      mbar_wait(bars.empty(slot), phase ^ 1);
      mbar_arrive_expect_tx(bars.full(slot), NUM_PANELS * boxes * box_bytes);
      if (whole_tile) {
        tma_load_4d(kv_smem + slot * Cfg::PANEL_BYTES, kv_map, bars.full(slot), 0, in_page, 0, page[0]);
      } else {
#pragma unroll
        for (int pn = 0; pn < NUM_PANELS; ++pn) {
#pragma unroll
          for (int j = 0; j < Cfg::MAX_PAGES_PER_TILE; ++j) {
            if (j < boxes)
              tma_load_3d(kv_smem + (slot + pn) * Cfg::PANEL_BYTES + j * box_bytes, kv_map, bars.full(slot),
                          pn * PANEL_CHANNELS, in_page, page[j]);
          }
        }
      }
      slot += NUM_PANELS;  // the ring holds whole tiles
      if (slot == Cfg::RING) {
        slot = 0;
        phase ^= 1;
      }
    } else if (Cfg::PER_PANEL && lane == 0) {
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
