// Every layout constant of the decode kernel, derived in one place (trap 10: nothing is repeated
// by hand), with a static_assert for each assumption the kernel code makes.
#pragma once

#include <cstdint>

namespace mla {

enum class Elem : int { BF16 = 0, FP16 = 1, E4M3 = 2 };

template <Elem E>
struct ElemInfo {
  static constexpr int BYTES = (E == Elem::E4M3) ? 1 : 2;
  static constexpr bool IS_FP8 = (E == Elem::E4M3);
};

// MLA head geometry (DeepSeek V2/V3, Kimi K2): K = 512 latent + 64 RoPE channels, V = the latent.
constexpr int HEAD_DIM = 576;
constexpr int V_DIM = 512;
constexpr int PANEL_CHANNELS = 64;  // one TMA box row: 128 B in BF16/FP16, 64 B in FP8
constexpr int NUM_PANELS = HEAD_DIM / PANEL_CHANNELS;
constexpr int NUM_V_PANELS = V_DIM / PANEL_CHANNELS;
static_assert(HEAD_DIM % PANEL_CHANNELS == 0 && V_DIM % PANEL_CHANNELS == 0, "panel split");

constexpr int SMEM_BUDGET = 101376;  // SM12x: 99 KiB per block, used on every architecture
constexpr int MAX_BLOCKS_PER_SM_TARGET = 1;

// KV: cache element type (also the shared-memory type of Q, K, V).
// QIN: element type q arrives in (equal to KV for 16-bit caches; BF16/FP16/E4M3 for an FP8 cache).
// OUT: output element type. ROWS: query rows (heads x query tokens) per CTA.
template <Elem KV_, Elem QIN_, Elem OUT_, int ROWS_>
struct DecodeConfig {
  static constexpr Elem KV = KV_;
  static constexpr Elem QIN = QIN_;
  static constexpr Elem OUT = OUT_;
  static constexpr bool FP8 = ElemInfo<KV>::IS_FP8;
  static constexpr bool Q_IS_FP8 = ElemInfo<QIN>::IS_FP8;
  static_assert(FP8 || QIN == KV, "a 16-bit cache takes q of its own dtype");
  static_assert(OUT != Elem::E4M3, "output is BF16 or FP16");

  static constexpr int ROWS = ROWS_;
  static constexpr int M_TILES = ROWS / 16;  // mma.sync m16 tiles
  static_assert(ROWS == 16 || ROWS == 32, "rows per CTA: 16 or 32");

  static constexpr int CONSUMER_WARPS = (ROWS == 16) ? 4 : 8;
  static constexpr int CONSUMER_THREADS = CONSUMER_WARPS * 32;
  static constexpr int THREADS = CONSUMER_THREADS + 32;  // + one TMA producer warp
  static constexpr int PRODUCER_WARP = CONSUMER_WARPS;

  // Element geometry
  static constexpr int ELEM_BYTES = ElemInfo<KV>::BYTES;
  static constexpr int ROW_BYTES = PANEL_CHANNELS * ELEM_BYTES;  // bytes per token per panel
  static constexpr int CHUNK_BYTES = 16;                         // ldmatrix row segment
  static constexpr int CHUNKS_PER_ROW = ROW_BYTES / CHUNK_BYTES;
  static constexpr int ELEMS_PER_CHUNK = CHUNK_BYTES / ELEM_BYTES;
  // Trap 3/4: the swizzle span is the box row; no box row wider than 128 B.
  static_assert(ROW_BYTES == 64 || ROW_BYTES == 128, "box row must be 64 B or 128 B");

  // MMA: m16n8k16 for 16-bit, m16n8k32 for e4m3; one k-step is always two 16-byte chunks.
  static constexpr int MMA_K = FP8 ? 32 : 16;
  static_assert(MMA_K * ELEM_BYTES == 2 * CHUNK_BYTES, "k-step = two ldmatrix chunks");
  static constexpr int KSTEPS_PER_PANEL = PANEL_CHANNELS / MMA_K;

  // KV tile: tokens per tile; BF16 tiles hold half the tokens of FP8 tiles (trap 6).
  static constexpr int TOKENS = FP8 ? 64 : 32;
  static constexpr int PANEL_BYTES = TOKENS * ROW_BYTES;  // one TMA panel: TOKENS x 64 channels
  static_assert(PANEL_BYTES % 1024 == 0, "panels stay 1024-byte aligned for the swizzle");
  static constexpr int MIN_BLOCK_SIZE = 16;
  static constexpr int MAX_PAGES_PER_TILE = TOKENS / MIN_BLOCK_SIZE;

  // S = Q K^T: warps form a (S_WARPS_M x S_WARPS_N) grid over (ROWS x TOKENS).
  static constexpr int S_WARPS_M = M_TILES;
  static constexpr int S_WARPS_N = CONSUMER_WARPS / S_WARPS_M;
  static constexpr int S_TOKENS_PER_WARP = TOKENS / S_WARPS_N;
  static constexpr int S_NTILES = S_TOKENS_PER_WARP / 8;
  static_assert(S_WARPS_M * S_WARPS_N == CONSUMER_WARPS, "S warp grid");
  static_assert(S_NTILES == 1 || S_NTILES == 2, "S: one or two n8 tiles per warp");
  static_assert(S_NTILES == 2 || KSTEPS_PER_PANEL % 2 == 0, "k-step pairs for one n8 tile");

  // O = P V: each warp owns all ROWS x V_COLS_PER_WARP columns of the output.
  static constexpr int V_COLS_PER_WARP = V_DIM / CONSUMER_WARPS;
  static constexpr int PV_PANELS_PER_WARP = V_COLS_PER_WARP / PANEL_CHANNELS;
  static constexpr int PV_GROUPS = V_COLS_PER_WARP / 16;  // 16-channel groups, 2 n8 tiles each
  static constexpr int PV_NTILES = 2 * PV_GROUPS;
  static constexpr int PV_KSTEPS = TOKENS / MMA_K;
  static_assert(V_COLS_PER_WARP % PANEL_CHANNELS == 0, "PV columns cover whole panels");
  static constexpr int ACC_REGS = M_TILES * PV_NTILES * 4;
  static_assert(ACC_REGS <= 64, "accumulator budget per thread (trap 8)");

  // P (softmax numerators) in shared memory: [ROWS][TOKENS], BF16/FP16 or e4m3 (scaled).
  static constexpr int P_ROW_BYTES = TOKENS * ELEM_BYTES;
  static_assert(P_ROW_BYTES == 64, "P rows use the 64-byte swizzle");
  static constexpr int P_BUF_BYTES = ROWS * P_ROW_BYTES;
  // FP8 P is stored as p * 2^8 so small probabilities stay normal numbers in e4m3.
  static constexpr float P_FP8_SCALE = 256.0f;

  // Q load: threads per query row and 8-element units per thread.
  static constexpr int Q_THREADS_PER_ROW = CONSUMER_THREADS / ROWS;
  static constexpr int Q_UNITS = HEAD_DIM / 8;
  static constexpr int Q_UNITS_PER_THREAD = Q_UNITS / Q_THREADS_PER_ROW;
  static_assert(Q_THREADS_PER_ROW == 8 && Q_UNITS % Q_THREADS_PER_ROW == 0, "Q load split");
  static constexpr int Q_PANEL_BYTES = ROWS * ROW_BYTES;
  static constexpr int Q_BYTES = NUM_PANELS * Q_PANEL_BYTES;

  // Shared memory map.
  static constexpr int OFF_Q = 0;
  static constexpr int OFF_KV = OFF_Q + Q_BYTES;
  static constexpr int OFF_P_FIXED_PART = 2 * P_BUF_BYTES + 2 * 2 * S_WARPS_N * ROWS * 4 +
                                          ROWS * 4;  // P x2, row max/sum partials x2, row scale
  static constexpr int RING_MAX_BY_BUDGET =
      (SMEM_BUDGET - 1024 - Q_BYTES - OFF_P_FIXED_PART - 64 * 16) / PANEL_BYTES;
  static constexpr int RING = RING_MAX_BY_BUDGET < 2 * NUM_PANELS ? RING_MAX_BY_BUDGET
                                                                  : 2 * NUM_PANELS;
  static_assert(RING >= NUM_PANELS, "the ring must hold one whole tile");
  static constexpr int OFF_P = OFF_KV + RING * PANEL_BYTES;
  static constexpr int OFF_RED_MAX = OFF_P + 2 * P_BUF_BYTES;
  static constexpr int OFF_RED_SUM = OFF_RED_MAX + 2 * S_WARPS_N * ROWS * 4;
  static constexpr int OFF_ROW_SCALE = OFF_RED_SUM + 2 * S_WARPS_N * ROWS * 4;
  static constexpr int OFF_BARRIERS = (OFF_ROW_SCALE + ROWS * 4 + 7) / 8 * 8;
  static constexpr int SMEM_BYTES = OFF_BARRIERS + 2 * RING * 8;
  static_assert(OFF_KV % 1024 == 0 && OFF_P % 1024 == 0, "swizzled buffers 1024-B aligned");
  static_assert(SMEM_BYTES <= SMEM_BUDGET, "SM12x shared-memory budget");
};

// Byte offset of (row, 16-byte chunk) in a panel of ROW_BYTES-wide rows, as TMA's
// SWIZZLE_128B / SWIZZLE_64B writes it (panel base 1024-B aligned): chunk ^= address bits [7..].
template <int ROW_BYTES>
__host__ __device__ constexpr uint32_t swizzle(int row, int chunk) {
  static_assert(ROW_BYTES == 64 || ROW_BYTES == 128, "swizzle span");
  return static_cast<uint32_t>(row * ROW_BYTES +
                               ((chunk ^ ((row * ROW_BYTES / 128) % (ROW_BYTES / 16))) << 4));
}

// FP8 V via ldmatrix.trans.b16 + prmt (trap 7: one definition for writer and reader).
// Within each 16-token group, mma k position k reads token kperm(k); P is written there.
__host__ __device__ constexpr int fp8_token_of_k(int k) {
  return 2 * ((k % 16) / 4) + (k % 2) + 8 * ((k % 4) / 2) + 16 * (k / 16);
}
__host__ __device__ constexpr int fp8_k_of_token(int token) {
  // inverse of fp8_token_of_k: token = 2q + e + 8j  ->  k = 4q + 2j + e
  return 4 * ((token % 8) / 2) + 2 * ((token % 16) / 8) + (token % 2) + 16 * (token / 16);
}

}  // namespace mla
