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
// The Python side holds the same facts in mla_plugin/geometry.py (tests/test_geometry.py compares).
constexpr int V_DIM = 512;
constexpr int ROPE_DIM = 64;
constexpr int HEAD_DIM = V_DIM + ROPE_DIM;
constexpr int MAX_HEADS = 128;
constexpr int MAX_QUERY_LEN = 8;
constexpr int MIN_BLOCK_SIZE = 16;  // smallest page: a tile holds at most TOKENS / 16 pages
constexpr int MAX_BLOCK_SIZE = 128;
constexpr int PANEL_CHANNELS = 64;  // one TMA box row: 128 B in BF16/FP16, 64 B in FP8
constexpr int NUM_PANELS = HEAD_DIM / PANEL_CHANNELS;
constexpr int NUM_V_PANELS = V_DIM / PANEL_CHANNELS;
static_assert(HEAD_DIM % PANEL_CHANNELS == 0 && V_DIM % PANEL_CHANNELS == 0, "panel split");

constexpr int SMEM_BUDGET_BYTES = 101376;  // SM12x: 99 KiB per block, used on every architecture

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

  static constexpr int SLICES = 4;  // warps per m-tile (see below)
  static constexpr int CONSUMER_WARPS = M_TILES * SLICES;
  static constexpr int CONSUMER_THREADS = CONSUMER_WARPS * 32;
  static constexpr int THREADS = CONSUMER_THREADS + 32;  // + one TMA producer warp
  static constexpr int PRODUCER_WARP = CONSUMER_WARPS;

  // Element geometry
  static constexpr int ELEM_BYTES = ElemInfo<KV>::BYTES;
  static constexpr int ROW_BYTES = PANEL_CHANNELS * ELEM_BYTES;  // bytes per token per panel
  static constexpr int CHUNK_BYTES = 16;                         // ldmatrix row segment
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
  static constexpr int MAX_PAGES_PER_TILE = TOKENS / MIN_BLOCK_SIZE;

  // Warps: M_TILES groups of SLICES warps. Warp (m, k) computes a partial S = Q K^T of m-tile m
  // over the k-steps g with g % SLICES == k (all TOKENS tokens), the group sums the partials
  // through shared memory, and every warp of the group then owns the whole softmax of its 16
  // rows (P stays in registers) and O for its V_COLS_PER_WARP output columns.
  static constexpr int NTILES = TOKENS / 8;  // n8 tiles of S per warp
  static_assert(NTILES % 2 == 0, "K fragments load two n8 tiles per ldmatrix.x4");
  static constexpr int KSTEPS_TILE = NUM_PANELS * KSTEPS_PER_PANEL;
  static constexpr int S_KSTEPS_MAX = (KSTEPS_TILE + SLICES - 1) / SLICES;

  // O = P V: each warp owns V_COLS_PER_WARP columns of its 16 rows.
  static constexpr int V_COLS_PER_WARP = V_DIM / SLICES;
  static constexpr int PV_PANELS_PER_WARP = V_COLS_PER_WARP / PANEL_CHANNELS;
  static constexpr int PV_GROUPS = V_COLS_PER_WARP / 16;  // 16-channel groups, 2 n8 tiles each
  static constexpr int PV_NTILES = 2 * PV_GROUPS;
  static constexpr int PV_KSTEPS = TOKENS / MMA_K;
  static_assert(V_COLS_PER_WARP % PANEL_CHANNELS == 0, "PV columns cover whole panels");
  static constexpr int ACC_REGS = PV_NTILES * 4;
  static_assert(ACC_REGS <= 64, "accumulator budget per thread (trap 8)");
  // P's A fragments are S's C fragments: one PV k-step consumes MMA_K / 8 n8 tiles of S.
  static_assert(PV_KSTEPS * MMA_K == TOKENS && NTILES == PV_KSTEPS * (MMA_K / 8), "P from S fragments");
  // FP8 P is stored as p * 2^8 so small probabilities stay normal numbers in e4m3.
  static constexpr float P_FP8_SCALE = 256.0f;

  // Q load: threads per query row and 8-element units per thread.
  static constexpr int Q_THREADS_PER_ROW = CONSUMER_THREADS / ROWS;
  static constexpr int Q_UNITS = HEAD_DIM / 8;
  static constexpr int Q_UNITS_PER_THREAD = Q_UNITS / Q_THREADS_PER_ROW;
  static_assert(Q_THREADS_PER_ROW == 8 && Q_UNITS % Q_THREADS_PER_ROW == 0, "Q load split");
  static constexpr int Q_PANEL_BYTES = ROWS * ROW_BYTES;
  static constexpr int Q_BYTES = NUM_PANELS * Q_PANEL_BYTES;

  // Partial S of every warp, in mma fragment order: [warp][n8 tile][lane] float4.
  static constexpr int S_PART_WARP_BYTES = NTILES * 32 * 16;
  static constexpr int S_PART_BYTES = CONSUMER_WARPS * S_PART_WARP_BYTES;

  // Shared memory map.
  static constexpr int OFF_Q = 0;
  static constexpr int OFF_KV = OFF_Q + Q_BYTES;
  static constexpr int FIXED_BYTES = Q_BYTES + S_PART_BYTES + ROWS * 4 + 2 * 2 * NUM_PANELS * 8;
  static constexpr int RING_MAX_BY_BUDGET = (SMEM_BUDGET_BYTES - FIXED_BYTES) / PANEL_BYTES;
  static constexpr int RING = RING_MAX_BY_BUDGET < 2 * NUM_PANELS ? RING_MAX_BY_BUDGET : 2 * NUM_PANELS;
  static_assert(RING >= NUM_PANELS, "the ring must hold one whole tile");
  static constexpr int OFF_S_PART = OFF_KV + RING * PANEL_BYTES;
  static constexpr int OFF_ROW_SCALE = OFF_S_PART + S_PART_BYTES;
  static constexpr int OFF_BARRIERS = (OFF_ROW_SCALE + ROWS * 4 + 7) / 8 * 8;
  static constexpr int SMEM_BYTES = OFF_BARRIERS + 2 * RING * 8;
  static_assert(OFF_KV % 1024 == 0, "swizzled buffers 1024-B aligned");
  static_assert(OFF_S_PART % 16 == 0, "float4 partials");
  static_assert(SMEM_BYTES <= SMEM_BUDGET_BYTES, "SM12x shared-memory budget");
};

// Byte offset of (row, 16-byte chunk) in a panel of ROW_BYTES-wide rows, as TMA's
// SWIZZLE_128B / SWIZZLE_64B writes it (panel base 1024-B aligned): chunk ^= address bits [7..].
template <int ROW_BYTES>
__host__ __device__ constexpr uint32_t swizzle(int row, int chunk) {
  static_assert(ROW_BYTES == 64 || ROW_BYTES == 128, "swizzle span");
  return static_cast<uint32_t>(row * ROW_BYTES +
                               ((chunk ^ ((row * ROW_BYTES / 128) % (ROW_BYTES / 16))) << 4));
}

// FP8 V via ldmatrix.trans.b16 + prmt (trap 7: one definition for the V and P sides).
// Within each 16-token group, mma k position k reads token fp8_token_of_k(k): the V
// fragments are built in that order and P's A fragments take their S values from it.
__host__ __device__ constexpr int fp8_token_of_k(int k) {
  return 2 * ((k % 16) / 4) + (k % 2) + 8 * ((k % 4) / 2) + 16 * (k / 16);
}

}  // namespace mla
