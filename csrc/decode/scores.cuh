// Phase 2: the partial S = Q K^T of one warp: its m-tile's 16 rows x the tile's TOKENS tokens,
// over its k-steps (slice, slice + SLICES, ...) of the 576 channels. NTILES independent MMA
// chains; Q comes from registers, K from the ring through ldmatrix.
#pragma once

#include "../elem_ops.cuh"
#include "q_load.cuh"
#include "smem.cuh"

namespace mla {

// mma.sync e4m3 is native from SM 10.0/12.0 on; sm_90 runs it as HMMA plus conversions.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 1000
constexpr bool EMULATED_FP8_MMA = true;
#else
constexpr bool EMULATED_FP8_MMA = false;
#endif

// K fragments of in-panel k-step kp for every n8 tile, multiplied into s.
template <class Cfg>
__device__ __forceinline__ void scores_kstep(uint32_t k_panel, int kp, const uint32_t (&qa)[4],
                                             float (&s)[Cfg::NTILES][4]) {
  using MmaOps = ElemOps<Cfg::MMA>;
  const int lane = threadIdx.x % 32;
  if constexpr (Cfg::CONVERT_KV) {
    // FP8 bytes: one 8x8 b16 matrix = 8 tokens x the k-step's 16 channels; lane (g, q) gets token
    // g's channels 4q..4q+3, widened to f16 as b0 = (4q, 4q+1), b1 = (4q+2, 4q+3): k positions
    // {2q, 2q+1, 2q+8, 2q+9} hold channels 4q..4q+3 (Q is loaded in the same order).
#pragma unroll
    for (int h = 0; h < Cfg::NTILES / 4; ++h) {
      uint32_t kb[4];  // matrix i = tokens 32h + 8i + 0..7: n8 tile 4h + i
      ldmatrix_x4(k_panel + swizzle<Cfg::ROW_BYTES>(32 * h + 8 * (lane / 8) + lane % 8, kp), kb);
#pragma unroll
      for (int i = 0; i < 4; ++i)
        MmaOps::mma(s[4 * h + i], qa, e4m3x2_lo_to_f16x2(kb[i]), e4m3x2_hi_to_f16x2(kb[i]));
    }
  } else {
    // 16-bit elements (k16) or e4m3 into e4m3 MMAs (k32): a k-step is two 16-byte chunks.
#pragma unroll
    for (int h = 0; h < Cfg::NTILES / 2; ++h) {
      // matrix i = tokens 16h + 8(i/2) + 0..7, chunk 2kp + i%2: n8 tiles 2h and 2h+1
      uint32_t kb[4];
      ldmatrix_x4(k_panel + swizzle<Cfg::ROW_BYTES>(16 * h + lane % 8 + 8 * (lane / 16), 2 * kp + (lane / 8) % 2), kb);
      MmaOps::mma(s[2 * h], qa, kb[0], kb[1]);
      MmaOps::mma(s[2 * h + 1], qa, kb[2], kb[3]);
    }
  }
}

// The warp's partial S of the current tile. Waits for each panel it reads (Cfg::PER_PANEL), else
// once, for panel 0 (a whole tile's boxes count their bytes on panel 0's barrier). Q: the
// registers `qf` (Q_IN_REGISTERS), else its shared-memory staging, one k-step at a time.
template <class Cfg>
__device__ __forceinline__ void partial_scores(const uint8_t* smem, uint32_t kv_smem, const RingBarriers<Cfg>& bars,
                                               const RingPosition<Cfg>& ring, int mtile, int slice,
                                               const uint32_t (&qf)[Cfg::S_KSTEPS_MAX][4],
                                               float (&s)[Cfg::NTILES][4]) {
#pragma unroll
  for (int j = 0; j < Cfg::NTILES; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[j][i] = 0.f;
  if constexpr (!Cfg::PER_PANEL) mbar_wait(bars.full(ring.slot_of(0)), ring.phase_of(0));
  if constexpr (!Cfg::Q_IN_REGISTERS && EMULATED_FP8_MMA) {
    // sm_90 emulates e4m3 MMA with extra registers: rolled, this stays free of spills.
#pragma unroll 1
    for (int gk = slice; gk < Cfg::KSTEPS_TILE; gk += Cfg::SLICES) {
      const int pn = gk / Cfg::KSTEPS_PER_PANEL;
      uint32_t qa[4];
      q_fragment<Cfg>(smem, mtile, gk, qa);
      if constexpr (Cfg::PER_PANEL) mbar_wait(bars.full(ring.slot_of(pn)), ring.phase_of(pn));
      const uint32_t k_panel = kv_smem + ring.panel_slot(pn) * Cfg::PANEL_BYTES;
      scores_kstep<Cfg>(k_panel, gk % Cfg::KSTEPS_PER_PANEL, qa, s);
    }
  } else {
    // Unrolled: panel and chunk offsets become constants (and Q stays in registers).
#pragma unroll
    for (int i = 0; i < Cfg::S_KSTEPS_MAX; ++i) {
      // k-step slice + SLICES * i of the tile (uniform per warp: e4m3 slices own 5 or 4 of them)
      if (Cfg::KSTEPS_TILE % Cfg::SLICES != 0 && slice + Cfg::SLICES * i >= Cfg::KSTEPS_TILE) break;
      const int pn = i * (Cfg::SLICES / Cfg::KSTEPS_PER_PANEL) + slice / Cfg::KSTEPS_PER_PANEL;
      uint32_t qa[4];
      if constexpr (Cfg::Q_IN_REGISTERS) {
#pragma unroll
        for (int r = 0; r < 4; ++r) qa[r] = qf[i][r];
      } else {
        q_fragment<Cfg>(smem, mtile, slice + Cfg::SLICES * i, qa);
      }
      if constexpr (Cfg::PER_PANEL) mbar_wait(bars.full(ring.slot_of(pn)), ring.phase_of(pn));
      const uint32_t k_panel = kv_smem + ring.panel_slot(pn) * Cfg::PANEL_BYTES;
      scores_kstep<Cfg>(k_panel, slice % Cfg::KSTEPS_PER_PANEL, qa, s);
    }
  }
}

}  // namespace mla
