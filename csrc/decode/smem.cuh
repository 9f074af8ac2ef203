// Typed views of the decode kernel's shared memory (the byte map is DecodeConfig's OFF_*).
#pragma once

#include <cstdint>

#include "../config.cuh"
#include "../ptx.cuh"

namespace mla {

// Per query row of the CTA: softmax scale (log2 units), this tile's rescale factor alpha, and
// the final running max / sum, written by the warp that owns the row's softmax.
struct RowStats {
  float* scale;
  float* alpha;
  float* m;
  float* l;
};

template <class Cfg>
__device__ __forceinline__ RowStats row_stats(const uint8_t* smem) {
  float* base = reinterpret_cast<float*>(const_cast<uint8_t*>(smem) + Cfg::OFF_ROW_STATS);
  return {base, base + Cfg::ROWS, base + 2 * Cfg::ROWS, base + 3 * Cfg::ROWS};
}

// The KV ring's mbarriers: full[slot] (TMA bytes landed), empty[slot] (every math warp is done
// with the slot), q_free (every math warp holds Q in registers: the staging area may be filled).
template <class Cfg>
struct RingBarriers {
  uint32_t full0, empty0, q_free;
  __device__ __forceinline__ explicit RingBarriers(const uint8_t* smem)
      : full0(smem_addr(smem + Cfg::OFF_BARRIERS)),
        empty0(full0 + Cfg::RING * Cfg::RING_BARRIER_BYTES),
        q_free(full0 + 2 * Cfg::RING * Cfg::RING_BARRIER_BYTES) {}
  __device__ __forceinline__ uint32_t full(uint32_t slot) const { return full0 + slot * Cfg::RING_BARRIER_BYTES; }
  __device__ __forceinline__ uint32_t empty(uint32_t slot) const { return empty0 + slot * Cfg::RING_BARRIER_BYTES; }
};

// Where the consumers are in the ring: the slot and phase of the current tile's panel 0.
template <class Cfg>
struct RingPosition {
  uint32_t slot = 0, phase = 0;
  __device__ __forceinline__ uint32_t slot_of(int pn) const {
    const uint32_t s = slot + pn;
    return s >= Cfg::RING ? s - Cfg::RING : s;
  }
  // The slot of the current tile's panel pn; where the ring holds whole tiles (WHOLE_TILE_RING)
  // a tile never wraps, so no wrap test.
  __device__ __forceinline__ uint32_t panel_slot(int pn) const {
    return Cfg::WHOLE_TILE_RING ? slot + pn : slot_of(pn);
  }
  __device__ __forceinline__ uint32_t phase_of(int pn) const { return slot + pn >= Cfg::RING ? phase ^ 1 : phase; }
  __device__ __forceinline__ void next_tile() {
    slot += NUM_PANELS;
    if (slot >= Cfg::RING) {
      slot -= Cfg::RING;
      phase ^= 1;
    }
  }
};

}  // namespace mla
