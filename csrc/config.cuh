// Every layout constant of the decode kernel, derived in one place (csrc/README.md, trap 10:
// nothing is repeated by hand), with a static_assert for each assumption the kernel code makes.
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
static_assert(HEAD_DIM % PANEL_CHANNELS == 0 && V_DIM % PANEL_CHANNELS == 0, "panel split");

constexpr int SMEM_BUDGET_BYTES = 101376;  // SM12x: 99 KiB per block, used on every architecture
constexpr int SM12X_SMEM_PER_SM = 102400;  // SM12x: 100 KiB per SM
constexpr int SMEM_RESERVED_PER_CTA = 1024;  // the driver's shared memory per CTA (sm_90+)
// The most a CTA may use for two of it to share an SM12x SM (dispatch.py derives the same).
constexpr int SM12X_PAIR_BUDGET_BYTES = SM12X_SMEM_PER_SM / 2 - SMEM_RESERVED_PER_CTA;
// An experiment awaiting its GPU measurement, off by default (csrc/README.md, "Built, not yet
// measured"): the FP8 16-row CTA on 16-bit MMAs sized for two per SM12x SM (DecodeConfig::
// SM12X_PAIR). MLA_PLUGIN_NVCC_DEFINES=MLA_SM12X_PAIR_RING=1 builds it under its own cache key.
#ifndef MLA_SM12X_PAIR_RING
#define MLA_SM12X_PAIR_RING 0
#endif
constexpr bool SM12X_PAIR_RING_BUILD = MLA_SM12X_PAIR_RING != 0;
constexpr int TILE_TOKENS = 32;            // KV tokens per tile, every variant (the TMA box height)
constexpr int MAX_KV_SPLITS = 512;         // splits per request the combine merges
constexpr int MAX_CLUSTER_SPLITS = 8;      // splits per request merged inside one cluster (portable size)

// An FP8 cache on 16-bit MMAs whose pages hold whole tiles is loaded one TMA box per tile: a 4-D
// view (channel, token, panel, block) whose box is the tile's 9 panels, one after the other in
// shared memory as 9 separate boxes would land. 9 x fewer TMA operations; without it the FP8 data
// path alone (no math) topped out at 57% of copy bandwidth on an H200 (csrc/README.md). The
// opt-in e4m3 MMAs keep panel boxes (their sm_90 emulation has no register left for the change).
// launch.cu (the tensor map) and the kernel both decide by this function.
constexpr bool whole_tile_box(Elem kv, Elem mma, int block_size) {
  return kv == Elem::E4M3 && mma != Elem::E4M3 && block_size >= TILE_TOKENS;
}

// Named barriers (bar.sync ids; 0 is __syncthreads). Each m-tile group of warps has its own.
enum NamedBarrier : uint32_t {
  BARRIER_CONSUMERS = 1,  // every math warp: the Q staging is complete
  BARRIER_GROUP0 = 2,     // the math warps of m-tile 0 (m-tile m uses BARRIER_GROUP0 + m)
};

// KV: cache element type. QIN: element type q arrives in (the cache's for 16-bit caches;
// BF16/FP16/E4M3 for an FP8 cache). OUT: output element type. MMA: tensor-core input type
// (the cache's for 16-bit caches; FP16 (default) or E4M3 (opt-in) for an FP8 cache).
// ROWS: query rows (heads x query tokens) per CTA.
template <Elem KV_, Elem QIN_, Elem OUT_, Elem MMA_, int ROWS_>
struct DecodeConfig {
  static constexpr Elem KV = KV_;
  static constexpr Elem QIN = QIN_;
  static constexpr Elem OUT = OUT_;
  static constexpr Elem MMA = MMA_;
  static constexpr bool FP8_CACHE = ElemInfo<KV>::IS_FP8;
  static constexpr bool Q_IS_FP8 = ElemInfo<QIN>::IS_FP8;  // arrives quantised, with its q_scale
  static constexpr bool E4M3_MMA = ElemInfo<MMA>::IS_FP8;
  // FP8 cache under 16-bit MMAs: K and V are converted e4m3 -> f16 (exact) in registers.
  static constexpr bool CONVERT_KV = FP8_CACHE && !E4M3_MMA;
  static_assert(FP8_CACHE || (QIN == KV && MMA == KV), "a 16-bit cache takes q of its own dtype");
  static_assert(!FP8_CACHE || MMA == Elem::FP16 || MMA == Elem::E4M3, "FP8 cache: f16 or e4m3 MMA");
  static_assert(OUT != Elem::E4M3, "output is BF16 or FP16");

  static constexpr int ROWS = ROWS_;
  static constexpr int M_TILES = ROWS / 16;  // mma.sync m16 tiles, one group of warps each
  static_assert(ROWS == 16 || ROWS == 32, "rows per CTA: 16 or 32");

  // Warps: M_TILES groups of SLICES warps plus one TMA producer warp. In a group, warp k computes
  // a partial S over the k-steps g with g % SLICES == k, owns the softmax of rows
  // [ROWS_PER_SLICE k, ROWS_PER_SLICE (k+1)) of the m-tile, and O for V_COLS_PER_WARP columns.
  static constexpr int SLICES = 4;
  static constexpr int CONSUMER_WARPS = M_TILES * SLICES;
  static constexpr int CONSUMER_THREADS = CONSUMER_WARPS * 32;
  static constexpr int THREADS = CONSUMER_THREADS + 32;
  static constexpr int PRODUCER_WARP = CONSUMER_WARPS;
  // Registers per thread. Each of an SM's 4 schedulers holds 16384: two 16-row CTAs (10 warps,
  // 3 on some scheduler) share a Hopper SM only at <= 170 each, and one 32-row CTA (9 warps)
  // needs the same. e4m3 MMAs, emulated on sm_90 with more registers, keep one CTA per SM there.
  static constexpr int SCHEDULERS = 4, SCHEDULER_REGISTERS = 16384;
  static constexpr int CTAS_PER_SM_TARGET = (ROWS == 16 && !E4M3_MMA) ? 2 : 1;
  static constexpr int WARPS_PER_SCHEDULER = (CTAS_PER_SM_TARGET * THREADS / 32 + SCHEDULERS - 1) / SCHEDULERS;
  static constexpr int REGISTERS_BY_SCHEDULER = SCHEDULER_REGISTERS / (32 * WARPS_PER_SCHEDULER) / 8 * 8;
  static constexpr int MAX_REGISTERS = REGISTERS_BY_SCHEDULER < 255 ? REGISTERS_BY_SCHEDULER : 255;
  static_assert(MAX_REGISTERS >= 128, "register budget");

  // Element geometry of the cache tile in shared memory.
  static constexpr int ELEM_BYTES = ElemInfo<KV>::BYTES;
  static constexpr int MMA_BYTES = ElemInfo<MMA>::BYTES;
  static constexpr int ROW_BYTES = PANEL_CHANNELS * ELEM_BYTES;  // bytes per token per panel
  static constexpr int CHUNK_BYTES = 16;                         // ldmatrix row segment
  // Traps 3/4: the swizzle span is the box row; no box row wider than 128 B.
  static_assert(ROW_BYTES == 64 || ROW_BYTES == 128, "box row must be 64 B or 128 B");

  // MMA: m16n8k16 for 16-bit inputs, m16n8k32 for e4m3.
  static constexpr int MMA_K = E4M3_MMA ? 32 : 16;
  static constexpr int KSTEP_BYTES = MMA_K * ELEM_BYTES;  // one k-step of a cache row
  static_assert(KSTEP_BYTES == 2 * CHUNK_BYTES || (CONVERT_KV && KSTEP_BYTES == CHUNK_BYTES),
                "a k-step is two ldmatrix chunks (one when FP8 bytes widen to f16)");
  static constexpr int KSTEPS_PER_PANEL = PANEL_CHANNELS / MMA_K;
  static constexpr int KSTEPS_TILE = NUM_PANELS * KSTEPS_PER_PANEL;
  static constexpr int S_KSTEPS_MAX = (KSTEPS_TILE + SLICES - 1) / SLICES;
  static_assert(SLICES % KSTEPS_PER_PANEL == 0, "a slice takes the same k-step of every panel it visits");

  // KV tile: TOKENS tokens (trap 6: every loop over the tile is bounded by TOKENS).
  static constexpr int TOKENS = TILE_TOKENS;
  static constexpr int PANEL_BYTES = TOKENS * ROW_BYTES;  // one TMA panel: TOKENS x 64 channels
  static_assert(PANEL_BYTES % 1024 == 0, "panels stay 1024-byte aligned for the swizzle");
  static constexpr int MAX_PAGES_PER_TILE = TOKENS / MIN_BLOCK_SIZE;
  static constexpr int NTILES = TOKENS / 8;  // n8 tiles of S per warp
  static_assert(NTILES % 2 == 0, "K fragments load two n8 tiles per ldmatrix.x4");
  static_assert(!CONVERT_KV || NTILES % 4 == 0, "FP8 K fragments load four n8 tiles per ldmatrix.x4");

  // Row-split softmax: warp k of a group reduces the partial S of ROWS_PER_SLICE rows x TOKENS,
  // each lane TOKENS_PER_LANE consecutive tokens of one row.
  static constexpr int ROWS_PER_SLICE = 16 / SLICES;
  static constexpr int LANES_PER_ROW = 32 / ROWS_PER_SLICE;
  static constexpr int TOKENS_PER_LANE = TOKENS / LANES_PER_ROW;
  static_assert(TOKENS_PER_LANE == 4, "a softmax lane reads one float4 of each partial");

  // O = P V: each warp owns V_COLS_PER_WARP columns of its 16 rows.
  static constexpr int V_COLS_PER_WARP = V_DIM / SLICES;
  static constexpr int PV_PANELS_PER_WARP = V_COLS_PER_WARP / PANEL_CHANNELS;
  static constexpr int PV_GROUPS = V_COLS_PER_WARP / 16;  // 16-channel groups, 2 n8 tiles each
  static constexpr int PV_NTILES = 2 * PV_GROUPS;
  static constexpr int PV_KSTEPS = TOKENS / MMA_K;
  static_assert(V_COLS_PER_WARP % PANEL_CHANNELS == 0, "PV columns cover whole panels");
  static_assert(PV_KSTEPS * MMA_K == TOKENS, "whole k-steps per tile");
  static constexpr int ACC_REGS = PV_NTILES * 4;
  static_assert(ACC_REGS <= 64, "accumulator budget per thread (trap 8)");
  // e4m3 P is stored as p * 2^8 so small probabilities stay normal numbers in e4m3.
  static constexpr float P_E4M3_SCALE = 256.0f;
  // Lazy softmax max (f16 P only): a row keeps its reference max until a tile's max exceeds it
  // by more than this many powers of two, so P reaches at most 2^8 and most tiles skip O's
  // rescale. With the exact max the largest P is 1.0, exact in any format; with a lazy one it is
  // rounded too: harmless in f16's 11 bits (FP8-cache error vs TRITON_MLA 0.53x either way), not
  // in bf16's 8 (bf16 error rose to 2.2x TRITON_MLA's on the H200 grid), so bf16 keeps the exact
  // max. e4m3 P (stored x 2^8, max 448) has no room either.
  static constexpr float RESCALE_SLACK_LOG2 = MMA == Elem::FP16 ? 8.f : 0.f;
  static_assert(RESCALE_SLACK_LOG2 <= 15.f, "P * 2^slack stays finite in fp16");

  // Q: staged once in shared memory as MMA elements ([ROWS][Q_ROW_ELEMS], padded so that the
  // fragment reads are free of bank conflicts), then held in registers for the whole CTA.
  // Each thread keeps the A fragments of its m-tile for its S_KSTEPS_MAX k-steps.
  static constexpr int Q_THREADS_PER_ROW = CONSUMER_THREADS / ROWS;
  static constexpr int Q_UNITS = HEAD_DIM / 8;  // 8-channel units of q
  static constexpr int Q_UNITS_PER_THREAD = Q_UNITS / Q_THREADS_PER_ROW;
  static_assert(Q_THREADS_PER_ROW == 8 && Q_UNITS % Q_THREADS_PER_ROW == 0, "Q load split");
  // Row stride in 4-byte words: 16-bit MMA reads 4 B at (g, 2q): stride = 4 (mod 32) words;
  // FP8 -> f16 reads 8 B at (g, 4q): stride = 8 (mod 32); e4m3 reads 4 B at (g, 4q): 20.
  static constexpr int Q_ROW_PAD_BYTES = CONVERT_KV ? 32 : (E4M3_MMA ? 16 : 16);
  static constexpr int Q_ROW_BYTES = HEAD_DIM * MMA_BYTES + Q_ROW_PAD_BYTES;
  static_assert((Q_ROW_BYTES / 4) % 32 == (CONVERT_KV ? 8 : (E4M3_MMA ? 20 : 4)), "Q fragment banks");
  static constexpr int Q_STAGE_BYTES = ROWS * Q_ROW_BYTES;

  // Partial S of every warp: [warp][16 rows][TOKENS + 8] fp32 (the 8-word pad makes the
  // fragment-order float2 stores and the softmax's float4 loads conflict-free).
  static constexpr int S_ROW_FLOATS = TOKENS + 8;
  static_assert(S_ROW_FLOATS % 32 == 8, "S partial banks");
  static constexpr int S_PART_WARP_BYTES = 16 * S_ROW_FLOATS * 4;
  static constexpr int S_PART_BYTES = CONSUMER_WARPS * S_PART_WARP_BYTES;
  // P: [m-tile][16 rows][P_ROW_BYTES] in MMA elements; an odd number of 16-byte units per row
  // keeps ldmatrix conflict-free.
  static constexpr int P_ROW_BYTES = TOKENS * MMA_BYTES + 16;
  static_assert((P_ROW_BYTES / 16) % 2 == 1, "P row stride");
  static constexpr int P_BYTES = M_TILES * 16 * P_ROW_BYTES;
  // Per row: softmax scale (log2 units), this tile's rescale factor, final m and l.
  static constexpr int ROW_STAT_BYTES = 4 * ROWS * 4;

  // Q lives in registers on the 16-bit MMA paths. e4m3 MMAs read it from shared memory each
  // k-step instead: emulated on sm_90, they need the registers (the same layout on every arch:
  // host and device must agree on the shared-memory map).
  static constexpr bool Q_IN_REGISTERS = !E4M3_MMA;

  // Shared memory map. The KV ring comes first; the Q staging overlaps the ring's last slots
  // (Q_FIRST_SLOT on), which the producer fills only after every math warp holds Q in registers;
  // where Q stays in shared memory it gets its own region after the ring.
  static constexpr int RING_BARRIER_BYTES = 8;  // one mbarrier
  static constexpr int Q_OWN_BYTES = Q_IN_REGISTERS ? 0 : (Q_STAGE_BYTES + 1023) / 1024 * 1024;
  static constexpr int FIXED_BYTES = Q_OWN_BYTES + S_PART_BYTES + P_BYTES + ROW_STAT_BYTES + RING_BARRIER_BYTES;
  static constexpr int RING_SLOT_BYTES = PANEL_BYTES + 2 * RING_BARRIER_BYTES;  // a panel and its barriers
  static constexpr int RING_MAX_BY_BUDGET = (SMEM_BUDGET_BYTES - FIXED_BYTES - 1024) / RING_SLOT_BYTES;
  static constexpr int RING_TILES_MAX = 4;  // deeper buys nothing: the producer is a page table read ahead
  static constexpr int RING_BY_BUDGET = RING_MAX_BY_BUDGET < RING_TILES_MAX * NUM_PANELS ? RING_MAX_BY_BUDGET
                                                                                         : RING_TILES_MAX * NUM_PANELS;
  // A ring of whole tiles (a tile's 9 panels contiguous, never wrapping) where a tile can be one TMA
  // box (whole_tile_box at pages of >= TOKENS): the math warps then wait for and release whole
  // tiles at every page size, smaller pages' boxes all completing on the tile's one barrier.
  static constexpr bool WHOLE_TILE_RING = whole_tile_box(KV, MMA, TILE_TOKENS);
  // Elsewhere a wait and a release per panel (the math warps' per-panel tile loop).
  static constexpr bool PER_PANEL = !WHOLE_TILE_RING;
  static constexpr int TILE_BYTES = NUM_PANELS * PANEL_BYTES;
  // In a SM12X_PAIR_RING_BUILD: two CTAs per SM12x SM where a ring of two whole tiles fits half of
  // its 100 KiB (FP8 on 16-bit MMAs, 16 rows: 18 KiB tiles). An 86 KB CTA is alone there, and a
  // 16-row CTA alone on its SM has 4 math warps, one per scheduler, with nothing to hide their
  // latencies (the Hopper stand-in fits two of either size, so only its ring gets shallower).
  static constexpr int PAIR_RING_MAX = (SM12X_PAIR_BUDGET_BYTES - FIXED_BYTES - 1024) / RING_SLOT_BYTES;
  static constexpr int PAIR_RING = PAIR_RING_MAX / NUM_PANELS * NUM_PANELS;
  static constexpr bool SM12X_PAIR =
      SM12X_PAIR_RING_BUILD && WHOLE_TILE_RING && CTAS_PER_SM_TARGET == 2 && PAIR_RING >= 2 * NUM_PANELS;
  static_assert(!SM12X_PAIR || PAIR_RING <= RING_BY_BUDGET, "the pair's ring is the shallower one");
  static constexpr int RING = SM12X_PAIR        ? PAIR_RING
                              : WHOLE_TILE_RING ? RING_BY_BUDGET / NUM_PANELS * NUM_PANELS
                                                : RING_BY_BUDGET;
  static_assert(!WHOLE_TILE_RING || RING % NUM_PANELS == 0, "a ring of whole tiles");
  static_assert(RING >= 2 * NUM_PANELS, "the ring must hold two whole tiles");
  static constexpr int OFF_KV = 0;
  static constexpr int RING_BYTES = RING * PANEL_BYTES;
  // Q staged at the ring's end would reach into tile 0 where the ring holds two tiles (16 rows of
  // f16 Q: 18.5 KiB): the producer's first box would then wait for Q. There it ends where P ends
  // instead, over tile 1's last panels, the S partials and P, which the math warps first write
  // only after all of them hold Q in registers (a named barrier: Q_OVER_SCRATCH).
  static constexpr int Q_AT_RING_END = (RING_BYTES - Q_STAGE_BYTES) / 1024 * 1024;
  static constexpr bool Q_OVER_SCRATCH = Q_IN_REGISTERS && WHOLE_TILE_RING && Q_AT_RING_END < TILE_BYTES;
  static constexpr int OFF_Q = !Q_IN_REGISTERS ? RING_BYTES
                               : Q_OVER_SCRATCH ? (RING_BYTES + S_PART_BYTES + P_BYTES - Q_STAGE_BYTES) / 16 * 16
                                                : Q_AT_RING_END;
  static constexpr int Q_FIRST_SLOT = Q_IN_REGISTERS ? OFF_Q / PANEL_BYTES : RING;  // first ring slot Q overlaps
  // Where 32 rows of 16-bit Q are larger than the ring past tile 0, tile 0's last panels wait
  // for Q to move into registers (a few hundred cycles; the S loop starts on the others).
  static_assert(Q_FIRST_SLOT >= NUM_PANELS / 2, "most of tile 0 never waits for Q");
  static_assert(!WHOLE_TILE_RING || !Q_IN_REGISTERS || Q_FIRST_SLOT >= NUM_PANELS, "a ring of whole tiles: tile 0 never waits for Q");
  static_assert(OFF_Q % 16 == 0, "Q staging: 16-byte stores");
  static constexpr int OFF_S_PART = OFF_KV + RING_BYTES + Q_OWN_BYTES;
  static constexpr int OFF_P = OFF_S_PART + S_PART_BYTES;
  static constexpr int OFF_ROW_STATS = OFF_P + P_BYTES;
  static constexpr int OFF_BARRIERS = (OFF_ROW_STATS + ROW_STAT_BYTES + 7) / 8 * 8;
  // full[RING], empty[RING], q_free
  static constexpr int SMEM_BYTES = OFF_BARRIERS + (2 * RING + 1) * RING_BARRIER_BYTES;
  // Split merge inside a cluster (cluster_merge.cuh): once the ring is drained, it holds the CTA's
  // normalised fp32 partial rows ([ROWS][MERGE_ROW_FLOATS]; 4 floats of pad spread the fragment-
  // order stores over the banks) and their log2-sum-exp2.
  static constexpr int MERGE_ROW_FLOATS = V_DIM + 4;
  static constexpr int OFF_MERGE_O = OFF_KV;
  static constexpr int OFF_MERGE_LSE = OFF_MERGE_O + ROWS * MERGE_ROW_FLOATS * 4;
  static constexpr int MERGE_BYTES = OFF_MERGE_LSE + ROWS * 4 - OFF_MERGE_O;
  // Where the drained ring cannot hold them (the e4m3 opt-in's 32-row ring), splits go through the
  // workspace and the combine kernel only (the host asks: max_active_clusters() is 0).
  static constexpr bool CLUSTER_MERGE = MERGE_BYTES <= RING_BYTES;
  static_assert(OFF_MERGE_O % 16 == 0 && (MERGE_ROW_FLOATS * 4) % 16 == 0, "float4 reads of the partial rows");
  static_assert(OFF_KV % 1024 == 0, "swizzled buffers 1024-B aligned");
  static_assert(OFF_S_PART % 16 == 0 && OFF_P % 16 == 0, "vector access alignment");
  static_assert(SMEM_BYTES <= SMEM_BUDGET_BYTES, "SM12x shared-memory budget");
  static_assert(!SM12X_PAIR || SMEM_BYTES <= SM12X_PAIR_BUDGET_BYTES, "two CTAs per SM12x SM");
  static_assert(!Q_OVER_SCRATCH || OFF_Q + Q_STAGE_BYTES <= OFF_ROW_STATS, "Q staging stops short of the row stats");
};

// The pair-ring build pairs exactly the FP8-cache 16-row CTAs on 16-bit MMAs (any q dtype), and
// nothing pairs in the default build.
template <Elem QIN, int ROWS>
using Fp8F16Config = DecodeConfig<Elem::E4M3, QIN, Elem::BF16, Elem::FP16, ROWS>;
static_assert(Fp8F16Config<Elem::BF16, 16>::SM12X_PAIR == SM12X_PAIR_RING_BUILD &&
                  Fp8F16Config<Elem::E4M3, 16>::SM12X_PAIR == SM12X_PAIR_RING_BUILD &&
                  !Fp8F16Config<Elem::BF16, 32>::SM12X_PAIR &&
                  !DecodeConfig<Elem::BF16, Elem::BF16, Elem::BF16, Elem::BF16, 16>::SM12X_PAIR,
              "MLA_SM12X_PAIR_RING pairs the FP8 16-row CTAs on 16-bit MMAs");

// Byte offset of (row, 16-byte chunk) in a panel of ROW_BYTES-wide rows, as TMA's
// SWIZZLE_128B / SWIZZLE_64B writes it (panel base 1024-B aligned): chunk ^= address bits [7..].
template <int ROW_BYTES>
__host__ __device__ constexpr uint32_t swizzle(int row, int chunk) {
  static_assert(ROW_BYTES == 64 || ROW_BYTES == 128, "swizzle span");
  return static_cast<uint32_t>(row * ROW_BYTES +
                               ((chunk ^ ((row * ROW_BYTES / 128) % (ROW_BYTES / 16))) << 4));
}

// e4m3 V via ldmatrix.trans.b16 + prmt (trap 7: one definition for the V and P sides).
// Within each 16-token group, e4m3 mma k position k reads token fp8_token_of_k(k): the V
// fragments are built in that order, and P is stored at position fp8_k_of_token(token).
__host__ __device__ constexpr int fp8_token_of_k(int k) {
  return 2 * ((k % 16) / 4) + (k % 2) + 8 * ((k % 4) / 2) + 16 * (k / 16);
}
__host__ __device__ constexpr int fp8_k_of_token(int t) {
  return 4 * ((t % 8) / 2) + 2 * ((t % 16) / 8) + (t % 2) + 16 * (t / 16);
}
__host__ __device__ constexpr bool fp8_maps_are_inverse(int n) {
  return n == 0 || (fp8_token_of_k(fp8_k_of_token(n - 1)) == n - 1 && fp8_maps_are_inverse(n - 1));
}
static_assert(fp8_maps_are_inverse(32), "fp8_k_of_token inverts fp8_token_of_k");

// The split workspace: one fp32 row of V_DIM (and one log2-sum-exp2) per (request, row tile,
// split, row in the tile). The only definition of its index: decode epilogue, empty-split
// writer and combine all call it.
__host__ __device__ constexpr int64_t partial_row(int b, int row_tile, int split, int row_in_tile,
                                                  int row_tiles, int num_splits, int rows_per_cta) {
  return ((static_cast<int64_t>(b) * row_tiles + row_tile) * num_splits + split) * rows_per_cta +
         row_in_tile;
}

}  // namespace mla
