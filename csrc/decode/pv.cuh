// Phase 4: O = alpha O + P V over the warp's V_COLS_PER_WARP output columns of its m-tile's 16
// rows: P's A fragments from shared memory (ldmatrix), V's B fragments from the ring
// (ldmatrix.trans; trap 5: on b16, never a byte transpose).
#pragma once

#include "../elem_ops.cuh"
#include "smem.cuh"
#include "scores.cuh"  // EMULATED_FP8_MMA
#include "softmax.cuh"

namespace mla {

// Masks that zero, in a thread's 16-bit B fragment registers r = 0 / 1 of k-step ks, the V of
// tokens >= kv_len: half i of register r holds token 16 ks + 8 r + 2q + i.
__device__ __forceinline__ void half_masks(int tok0, int ks, int q4, int kv_len, uint32_t (&mask)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    uint32_t m = 0;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (tok0 + 16 * ks + 8 * r + 2 * q4 + i < kv_len) m |= 0xffffu << (16 * i);
    mask[r] = m;
  }
}

// The same for e4m3 fragments of a k32 step: byte i of register r holds token
// 32 ks + 16 r + fp8_token_of_k(4q + i) (trap 7: the order P was stored in).
__device__ __forceinline__ void byte_masks(int tok0, int ks, int q4, int kv_len, uint32_t (&mask)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    uint32_t m = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (tok0 + 32 * ks + 16 * r + fp8_token_of_k(4 * q4 + i) < kv_len) m |= 0xffu << (8 * i);
    mask[r] = m;
  }
}

template <class Cfg>
__device__ __forceinline__ void p_fragment(uint8_t* smem, int mtile, int ks, uint32_t (&a)[4]) {
  const int lane = threadIdx.x % 32;
  // matrices: rows 0-7 | 8-15 (lane / 8 % 2) x k bytes [32 ks, +16) | [+16, +32) (lane / 16)
  constexpr int KSTEP_P_BYTES = Cfg::MMA_K * Cfg::MMA_BYTES;
  static_assert(KSTEP_P_BYTES == 32, "a P k-step is two 16-byte ldmatrix rows");
  ldmatrix_x4(smem_addr(p_row<Cfg>(smem, mtile, lane % 8 + 8 * ((lane / 8) % 2))) + KSTEP_P_BYTES * ks + 16 * (lane / 16), a);
}

// Scale the running output of rows g, g + 8 by their tile's alpha; nothing to do (most tiles,
// with the lazy max) when every row of the m-tile keeps alpha = 1.
template <class Cfg>
__device__ __forceinline__ void rescale_output(float (&acc)[Cfg::PV_NTILES][4], float alpha0, float alpha8) {
  if (__all_sync(0xffffffffu, alpha0 == 1.f && alpha8 == 1.f)) return;
#pragma unroll
  for (int nt = 0; nt < Cfg::PV_NTILES; ++nt) {
    acc[nt][0] *= alpha0;
    acc[nt][1] *= alpha0;
    acc[nt][2] *= alpha8;
    acc[nt][3] *= alpha8;
  }
}

// O += P V for the tile; p_frag(ks, a) gives P's A fragment of k-step ks. A tail tile (past
// kv_len) has the V of tokens beyond kv_len zeroed in the fragment registers (they may be garbage
// or NaN); MASKED false compiles the masks out, for tiles known not to be tails.
template <class Cfg, bool MASKED, class PFragment>
__device__ __forceinline__ void pv_tile_body(uint32_t kv_smem, const RingPosition<Cfg>& ring, int slice, int tok0,
                                             int kv_len, bool tail, PFragment&& p_frag,
                                             float (&acc)[Cfg::PV_NTILES][4]) {
  using MmaOps = ElemOps<Cfg::MMA>;
  const int lane = threadIdx.x % 32;
  const int q4 = lane % 4;
  const int col0 = slice * Cfg::V_COLS_PER_WARP;
  auto masked = [&](uint32_t v, uint32_t m) { return MASKED ? v & m : v; };

  if constexpr (Cfg::CONVERT_KV) {
    // FP8 V, f16 MMAs: per k-step and 16-channel chunk, one ldmatrix.x2.trans: matrix i = tokens
    // 16 ks + 8i + 0..7; lane (g, q) gets bytes (token 2q: channels 2g, 2g+1 | token 2q+1: 2g,
    // 2g+1). One prmt puts the even channels (bytes 0, 2) in the low half, the odd ones (1, 3) in
    // the high half; each half widens to f16 exactly and feeds n8 tile "even" / "odd". (x2 rather
    // than x4 over two k-steps: fewer live registers, no spill at 32 rows.)
#pragma unroll
    for (int ks = 0; ks < Cfg::PV_KSTEPS; ++ks) {
      uint32_t pa[4];
      p_frag(ks, pa);
      uint32_t mask[2] = {0xffffffffu, 0xffffffffu};
      if (MASKED && tail) half_masks(tok0, ks, q4, kv_len, mask);
#pragma unroll
      for (int gi = 0; gi < Cfg::PV_GROUPS; ++gi) {
        const int col = col0 + 16 * gi;
        const uint32_t v_panel =
            kv_smem + ring.panel_slot(col / PANEL_CHANNELS) * Cfg::PANEL_BYTES;
        uint32_t vb[2];
        ldmatrix_x2_trans(v_panel + swizzle<Cfg::ROW_BYTES>(16 * ks + 8 * ((lane / 8) % 2) + lane % 8,
                                                            (col % PANEL_CHANNELS) / 16),
                          vb);
        const uint32_t v0 = prmt(vb[0], 0u, 0x3120), v1 = prmt(vb[1], 0u, 0x3120);
        MmaOps::mma(acc[2 * gi], pa, masked(e4m3x2_lo_to_f16x2(v0), mask[0]), masked(e4m3x2_lo_to_f16x2(v1), mask[1]));
        MmaOps::mma(acc[2 * gi + 1], pa, masked(e4m3x2_hi_to_f16x2(v0), mask[0]),
                    masked(e4m3x2_hi_to_f16x2(v1), mask[1]));
      }
    }
  } else {
#pragma unroll
    for (int ks = 0; ks < Cfg::PV_KSTEPS; ++ks) {
      uint32_t pa[4];
      p_frag(ks, pa);
      uint32_t vmask[2] = {0xffffffffu, 0xffffffffu};
      if (MASKED && tail) {
        if constexpr (Cfg::E4M3_MMA)
          byte_masks(tok0, ks, q4, kv_len, vmask);
        else
          half_masks(tok0, ks, q4, kv_len, vmask);
      }
#pragma unroll
      for (int gi = 0; gi < Cfg::PV_GROUPS; ++gi) {
        const int col = col0 + 16 * gi;
        const uint32_t v_panel =
            kv_smem + ring.panel_slot(col / PANEL_CHANNELS) * Cfg::PANEL_BYTES;
        uint32_t vb[4], b_even[2], b_odd[2];
        if constexpr (Cfg::E4M3_MMA) {
          // matrices = tokens 32ks + 8i.., one 16-channel chunk; bytes regrouped by prmt.
          const int chunk = (col % PANEL_CHANNELS) / 16;
          ldmatrix_x4_trans(v_panel + swizzle<Cfg::ROW_BYTES>(Cfg::MMA_K * ks + lane % 8 + 8 * (lane / 8), chunk), vb);
          b_even[0] = masked(prmt(vb[0], vb[1], 0x6420), vmask[0]);
          b_even[1] = masked(prmt(vb[2], vb[3], 0x6420), vmask[1]);
          b_odd[0] = masked(prmt(vb[0], vb[1], 0x7531), vmask[0]);
          b_odd[1] = masked(prmt(vb[2], vb[3], 0x7531), vmask[1]);
        } else {
          // matrices = (tokens 0-7 | 8-15) x (chunk c | c+1)
          const int chunk = (col % PANEL_CHANNELS) / 8;
          ldmatrix_x4_trans(v_panel + swizzle<Cfg::ROW_BYTES>(Cfg::MMA_K * ks + lane % 8 + 8 * ((lane / 8) % 2),
                                                              chunk + lane / 16),
                            vb);
          b_even[0] = masked(vb[0], vmask[0]);
          b_even[1] = masked(vb[1], vmask[1]);
          b_odd[0] = masked(vb[2], vmask[0]);
          b_odd[1] = masked(vb[3], vmask[1]);
        }
        MmaOps::mma(acc[2 * gi], pa, b_even[0], b_even[1]);
        MmaOps::mma(acc[2 * gi + 1], pa, b_odd[0], b_odd[1]);
      }
    }
  }
}

template <class Cfg, class PFragment>
__device__ __forceinline__ void pv_tile(uint32_t kv_smem, const RingBarriers<Cfg>& bars, const RingPosition<Cfg>& ring,
                                        int slice, int tok0, int kv_len, PFragment&& p_frag,
                                        float (&acc)[Cfg::PV_NTILES][4]) {
  const int pv_panel0 = slice * Cfg::V_COLS_PER_WARP / PANEL_CHANNELS;
  if constexpr (Cfg::PER_PANEL) {
#pragma unroll
    for (int i = 0; i < Cfg::PV_PANELS_PER_WARP; ++i)  // no-op when S saw the panel
      mbar_wait(bars.full(ring.slot_of(pv_panel0 + i)), ring.phase_of(pv_panel0 + i));
  }
  const bool tail = tok0 + Cfg::TOKENS > kv_len;  // tokens past kv_len may be garbage (NaN)
  if constexpr (Cfg::E4M3_MMA && EMULATED_FP8_MMA) {
    // One body (masks all ones off the tail): two would spill the emulated 32-row build.
    pv_tile_body<Cfg, true>(kv_smem, ring, slice, tok0, kv_len, tail, p_frag, acc);
  } else if (tail) {
    pv_tile_body<Cfg, true>(kv_smem, ring, slice, tok0, kv_len, tail, p_frag, acc);
  } else {
    pv_tile_body<Cfg, false>(kv_smem, ring, slice, tok0, kv_len, tail, p_frag, acc);
  }
}

}  // namespace mla
