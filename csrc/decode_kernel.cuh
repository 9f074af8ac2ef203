// MLA paged decode kernel: one CTA = one request x one tile of ROWS query rows x one KV split.
//
// Warp roles: CONSUMER_WARPS math warps and one producer warp that streams the request's KV
// through TMA into a ring of panels (TOKENS tokens x 64 channels each, 9 panels per tile).
// Per KV tile the math warps
//   1. compute S = Q K^T (warp grid over rows x tokens, all 9 panels),
//   2. exchange row maxima through shared memory (online softmax in exp2, scale folded in),
//   3. write P to shared memory and exchange row sums,
//   4. compute O += P V, each warp owning V_COLS_PER_WARP output columns for all rows.
// K and V share the tile: the first 8 panels serve both products (loaded once).
#pragma once

#include <cuda.h>

#include <cfloat>
#include <cstdint>

#include "config.cuh"
#include "elem_ops.cuh"
#include "params.h"
#include "ptx.cuh"

namespace mla {

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

constexpr float LN2 = 0.6931471805599453f;
constexpr int Q_FP8_EXPONENT = 8;  // a row's |q| max lands in [2^7, 2^8) after scaling
constexpr uint32_t CONSUMER_BARRIER_ID = 1;

// mma.sync e4m3 is native from SM 10.0/12.0 on; sm_90 runs it as HMMA plus conversions.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 1000
constexpr bool EMULATED_FP8_MMA = true;
#else
constexpr bool EMULATED_FP8_MMA = false;
#endif

// Where the CTA's query rows come from and how far each may look.
struct RowGeometry {
  int row_tile;
  int rows_per_request;
  int num_heads;
  int query_len;
  int seq_len;  // as given (used by the causal offset)
  int kv_len;   // seq_len clamped to the block table
  bool causal;

  __device__ __forceinline__ bool valid(int row_local, int rows) const {
    return row_tile * rows + row_local < rows_per_request;
  }
  // Number of KV tokens the row may attend to (padding rows: kv_len, their output is dropped).
  __device__ __forceinline__ int limit(int row_local, int rows) const {
    const int rg = row_tile * rows + row_local;
    if (rg >= rows_per_request || !causal) return kv_len;
    const int t = rg / num_heads;
    return max(0, min(kv_len, seq_len - query_len + 1 + t));
  }
};

// ------------------------------------------------------------------------------------------
// Q: global -> shared (swizzled like the KV panels), FP8 quantisation per row when needed.
// ------------------------------------------------------------------------------------------
template <class Cfg>
__device__ __forceinline__ void load_q(const DecodeParams& p, uint8_t* smem, int b,
                                       const RowGeometry& geo, float kv_scale) {
  using QOps = ElemOps<Cfg::QIN>;
  using QT = typename QOps::storage;
  const int tid = threadIdx.x;
  const int row = tid / Cfg::Q_THREADS_PER_ROW;
  const int sub = tid % Cfg::Q_THREADS_PER_ROW;
  const bool valid = geo.valid(row, Cfg::ROWS);
  const int rg = geo.row_tile * Cfg::ROWS + row;
  const int t = valid ? rg / p.num_heads : 0;
  const int h = valid ? rg % p.num_heads : 0;
  const int64_t token = static_cast<int64_t>(b) * p.query_len + t;
  const QT* nope = static_cast<const QT*>(p.q_nope) + token * p.q_nope_stride_t + h * p.q_nope_stride_h;
  const QT* pe = static_cast<const QT*>(p.q_pe) + token * p.q_pe_stride_t + h * p.q_pe_stride_h;
  uint8_t* q_smem = smem + Cfg::OFF_Q;
  constexpr int NOPE_UNITS = V_DIM / 8;
  auto unit_src = [&](int u) { return u < NOPE_UNITS ? nope + 8 * u : pe + 8 * (u - NOPE_UNITS); };
  // Unit u = channels [8u, 8u+8): panel u/8, element offset 8*(u%8) inside the panel row.
  auto unit_dst = [&](int u) -> uint8_t* {
    const int byte_in_row = 8 * (u % 8) * Cfg::ELEM_BYTES;
    return q_smem + (u / 8) * Cfg::Q_PANEL_BYTES +
           swizzle<Cfg::ROW_BYTES>(row, byte_in_row / Cfg::CHUNK_BYTES) + byte_in_row % Cfg::CHUNK_BYTES;
  };

  float row_scale = p.softmax_scale_log2;
  if constexpr (!Cfg::FP8) {
#pragma unroll
    for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
      const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (valid) v = *reinterpret_cast<const uint4*>(unit_src(u));
      *reinterpret_cast<uint4*>(unit_dst(u)) = v;
    }
  } else if constexpr (Cfg::Q_IS_FP8) {
#pragma unroll
    for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
      const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
      uint2 v = make_uint2(0, 0);
      if (valid) v = *reinterpret_cast<const uint2*>(unit_src(u));
      *reinterpret_cast<uint2*>(unit_dst(u)) = v;
    }
    const float q_scale = p.q_scale_ptr ? __ldg(p.q_scale_ptr) : p.q_scale;
    row_scale *= kv_scale * q_scale;
  } else {
    // 16-bit q into an e4m3 product: quantise each row with its own scale (amax / 448), so no
    // query saturates whatever its magnitude; the scale is folded into the softmax scale.
    uint4 v[Cfg::Q_UNITS_PER_THREAD];
    float amax = 0.f;
#pragma unroll
    for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
      const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
      v[k] = valid ? *reinterpret_cast<const uint4*>(unit_src(u)) : make_uint4(0, 0, 0, 0);
      const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = QOps::unpack2(w[i]);
        amax = fmaxf(amax, fmaxf(fabsf(f.x), fabsf(f.y)));
      }
    }
#pragma unroll
    for (int off = 1; off < Cfg::Q_THREADS_PER_ROW; off *= 2)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    // A power-of-two scale: the scaling is exact (anyone can reproduce the quantisation bit for
    // bit) and |q| * inv < 2^8 < 448, so nothing saturates; e4m3's relative precision does not
    // depend on where in its range the row sits.
    int exponent = 0;
    frexpf(amax, &exponent);  // amax = m * 2^exponent, m in [0.5, 1)
    const float q_scale = amax > 0.f ? ldexpf(1.f, exponent - Q_FP8_EXPONENT) : 1.f;
    const float inv = amax > 0.f ? ldexpf(1.f, Q_FP8_EXPONENT - exponent) : 1.f;
#pragma unroll
    for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
      const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
      const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
      uint32_t packed[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float2 f0 = QOps::unpack2(w[2 * i]);
        const float2 f1 = QOps::unpack2(w[2 * i + 1]);
        const uint32_t lo = ElemOps<Elem::E4M3>::pack2(f0.x * inv, f0.y * inv);
        const uint32_t hi = ElemOps<Elem::E4M3>::pack2(f1.x * inv, f1.y * inv);
        packed[i] = lo | (hi << 16);
      }
      *reinterpret_cast<uint2*>(unit_dst(u)) = make_uint2(packed[0], packed[1]);
    }
    row_scale *= kv_scale * q_scale;
  }
  if (sub == 0) reinterpret_cast<float*>(smem + Cfg::OFF_ROW_SCALE)[row] = row_scale;
}

// ------------------------------------------------------------------------------------------
// Producer: one lane walks the CTA's tiles and issues one TMA box per (panel, page).
// ------------------------------------------------------------------------------------------
template <class Cfg>
__device__ __forceinline__ void produce(const CUtensorMap* kv_map, const DecodeParams& p,
                                        uint8_t* smem, int b, int kv_len, int t_begin,
                                        int t_end) {
  const int lane = threadIdx.x % 32;
  const uint32_t kv_smem = smem_addr(smem + Cfg::OFF_KV);
  const uint32_t full0 = smem_addr(smem + Cfg::OFF_BARRIERS);
  const uint32_t empty0 = full0 + Cfg::RING * 8;
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
  int pages_next = load_pages(t_begin);
  uint32_t slot = 0, phase = 0;
  for (int tile = t_begin; tile < t_end; ++tile) {
    const int pages_cur = pages_next;
    if (tile + 1 < t_end) pages_next = load_pages(tile + 1);  // hide the table read
    const int tok0 = tile * Cfg::TOKENS;
    const int boxes = tile_in_one_page ? 1 : min(pages_per_tile, ceil_div(kv_len - tok0, bs));
    const int in_page = tile_in_one_page ? tok0 % bs : 0;
    int page[Cfg::MAX_PAGES_PER_TILE];
#pragma unroll
    for (int j = 0; j < Cfg::MAX_PAGES_PER_TILE; ++j) page[j] = __shfl_sync(0xffffffffu, pages_cur, j);
    if (lane == 0) {
      for (int pn = 0; pn < NUM_PANELS; ++pn) {
        mbar_wait(empty0 + slot * 8, phase ^ 1);
        mbar_arrive_expect_tx(full0 + slot * 8, boxes * box_bytes);
#pragma unroll
        for (int j = 0; j < Cfg::MAX_PAGES_PER_TILE; ++j) {
          if (j < boxes)
            tma_load_3d(kv_smem + slot * Cfg::PANEL_BYTES + j * box_bytes, kv_map, full0 + slot * 8,
                        pn * PANEL_CHANNELS, in_page, page[j]);
        }
        if (++slot == Cfg::RING) { slot = 0; phase ^= 1; }
      }
    }
    __syncwarp();  // the page shuffles above need the whole warp each tile
  }
}

// ------------------------------------------------------------------------------------------
// Rows of a CTA that has no KV tile in its split: zeros / -inf so nothing reads garbage.
// ------------------------------------------------------------------------------------------
template <class Cfg>
__device__ void write_empty_rows(const DecodeParams& p, int b, const RowGeometry& geo, int split) {
  using OT = typename ElemOps<Cfg::OUT>::storage;
  for (int i = threadIdx.x; i < Cfg::ROWS; i += Cfg::CONSUMER_THREADS) {
    if (p.num_splits > 1) {
      const int64_t cta = (static_cast<int64_t>(b) * p.row_tiles + geo.row_tile) * p.num_splits + split;
      p.partial_lse[cta * Cfg::ROWS + i] = -INFINITY;
    } else if (geo.valid(i, Cfg::ROWS)) {
      const int rg = geo.row_tile * Cfg::ROWS + i;
      const int64_t token = static_cast<int64_t>(b) * p.query_len + rg / p.num_heads;
      p.lse[token * p.num_heads + rg % p.num_heads] = -INFINITY;
    }
  }
  if (p.num_splits > 1) return;
  // Zero the output rows: 512 channels of 2 bytes each, 16 bytes per store.
  constexpr int VEC = 8;
  for (int i = threadIdx.x; i < Cfg::ROWS * (V_DIM / VEC); i += Cfg::CONSUMER_THREADS) {
    const int row = i / (V_DIM / VEC);
    if (!geo.valid(row, Cfg::ROWS)) continue;
    const int rg = geo.row_tile * Cfg::ROWS + row;
    const int64_t token = static_cast<int64_t>(b) * p.query_len + rg / p.num_heads;
    OT* dst = static_cast<OT*>(p.out) + token * p.out_stride_t + (rg % p.num_heads) * p.out_stride_h +
              (i % (V_DIM / VEC)) * VEC;
    *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
  }
}

// ------------------------------------------------------------------------------------------
// P (registers, S's C fragments) -> A fragments of the PV product for k-step ks.
// ------------------------------------------------------------------------------------------
template <class Cfg>
__device__ __forceinline__ void p_fragments(const float (&p)[Cfg::NTILES][4], int ks, uint32_t (&a)[4]) {
  if constexpr (Cfg::FP8) {
    // k32: group r (tokens 16r..16r+15 of the k-step) = n8 tiles 4ks+2r, 4ks+2r+1. Logical k
    // 4q+i reads token fp8_token_of_k(4q+i) = {2q, 2q+1, 8+2q, 9+2q}: exactly the S values this
    // thread holds, so P needs no shuffle (the V side uses the same map, trap 7).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float* lo = p[4 * ks + 2 * r];
      const float* hi = p[4 * ks + 2 * r + 1];
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // h = 0: row g, h = 1: row g + 8
        const uint32_t b01 = ElemOps<Elem::E4M3>::pack2(lo[2 * h] * Cfg::P_FP8_SCALE, lo[2 * h + 1] * Cfg::P_FP8_SCALE);
        const uint32_t b23 = ElemOps<Elem::E4M3>::pack2(hi[2 * h] * Cfg::P_FP8_SCALE, hi[2 * h + 1] * Cfg::P_FP8_SCALE);
        a[2 * r + h] = b01 | (b23 << 16);
      }
    }
  } else {
    // k16: tokens 16ks + {2q, 2q+1} (tile 2ks) and 16ks + 8 + {2q, 2q+1} (tile 2ks+1).
    using Ops = ElemOps<Cfg::KV>;
    a[0] = Ops::pack2(p[2 * ks][0], p[2 * ks][1]);
    a[1] = Ops::pack2(p[2 * ks][2], p[2 * ks][3]);
    a[2] = Ops::pack2(p[2 * ks + 1][0], p[2 * ks + 1][1]);
    a[3] = Ops::pack2(p[2 * ks + 1][2], p[2 * ks + 1][3]);
  }
}

// ------------------------------------------------------------------------------------------
// The kernel.
// ------------------------------------------------------------------------------------------
template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, 1)
    mla_decode_kernel(const __grid_constant__ CUtensorMap kv_map, const DecodeParams p) {
  using KvOps = ElemOps<Cfg::KV>;
  using OT = typename ElemOps<Cfg::OUT>::storage;
  extern __shared__ __align__(1024) uint8_t smem[];

  const int row_tile = blockIdx.x;
  const int split = blockIdx.y;
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  const int seq_len = __ldg(p.seq_lens + b);
  const int kv_len = max(0, min(seq_len, p.max_blocks * p.block_size));
  const int n_tiles = ceil_div(kv_len, Cfg::TOKENS);
  const int tiles_per_split = ceil_div(n_tiles, p.num_splits);
  const int t_begin = split * tiles_per_split;
  const int t_end = min(n_tiles, t_begin + tiles_per_split);
  const RowGeometry geo{row_tile, p.rows_per_request, p.num_heads, p.query_len,
                        seq_len,  kv_len,             p.causal != 0};

  if (t_begin >= t_end) {
    if (warp < Cfg::CONSUMER_WARPS) write_empty_rows<Cfg>(p, b, geo, split);
    return;
  }

  const uint32_t full0 = smem_addr(smem + Cfg::OFF_BARRIERS);
  const uint32_t empty0 = full0 + Cfg::RING * 8;
  if (threadIdx.x == Cfg::CONSUMER_THREADS) {
    if (smem_addr(smem) % 1024 != 0) __trap();  // the swizzle formulas assume it
    for (int i = 0; i < Cfg::RING; ++i) {
      mbar_init(full0 + i * 8, 1);
      mbar_init(empty0 + i * 8, Cfg::CONSUMER_WARPS);
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (warp == Cfg::PRODUCER_WARP) {
    produce<Cfg>(&kv_map, p, smem, b, kv_len, t_begin, t_end);
    return;
  }

  // ---------------------------------------------------------------- consumers
  const float kv_scale = p.kv_scale_ptr ? __ldg(p.kv_scale_ptr) : p.kv_scale;
  load_q<Cfg>(p, smem, b, geo, kv_scale);
  named_barrier_sync(CONSUMER_BARRIER_ID, Cfg::CONSUMER_THREADS);

  const int g = lane / 4;   // mma fragment row group
  const int q4 = lane % 4;  // mma fragment column pair
  const int mtile = static_cast<unsigned>(warp) / Cfg::SLICES;  // this warp's 16 rows
  const int slice = static_cast<unsigned>(warp) % Cfg::SLICES;  // its k-steps of S, its V columns
  const uint32_t group_barrier = CONSUMER_BARRIER_ID + 1 + mtile;
  const uint32_t q_smem = smem_addr(smem + Cfg::OFF_Q);
  const uint32_t kv_smem = smem_addr(smem + Cfg::OFF_KV);
  float4* s_part = reinterpret_cast<float4*>(smem + Cfg::OFF_S_PART);
  const float* row_scale = reinterpret_cast<const float*>(smem + Cfg::OFF_ROW_SCALE);

  const int row0 = mtile * 16 + g;  // this thread's rows: row0 and row0 + 8
  const int lim[2] = {geo.limit(row0, Cfg::ROWS), geo.limit(row0 + 8, Cfg::ROWS)};
  const int min_limit = geo.limit(0, Cfg::ROWS);  // row 0 has the smallest causal limit
  const float scale[2] = {row_scale[row0], row_scale[row0 + 8]};
  const int col0 = slice * Cfg::V_COLS_PER_WARP;
  const int pv_panel0 = col0 / PANEL_CHANNELS;

  float acc[Cfg::PV_NTILES][4];
#pragma unroll
  for (int nt = 0; nt < Cfg::PV_NTILES; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};  // raw score units
  float l_run[2] = {0.f, 0.f};

  uint32_t ring_slot = 0, ring_phase = 0;  // ring position of the current tile's panel 0
  for (int tile = t_begin; tile < t_end; ++tile) {
    const int tok0 = tile * Cfg::TOKENS;
    auto slot_of = [&](int pn) {
      const uint32_t s = ring_slot + pn;
      return s >= Cfg::RING ? s - Cfg::RING : s;
    };
    auto phase_of = [&](int pn) { return ring_slot + pn >= Cfg::RING ? ring_phase ^ 1 : ring_phase; };
    auto wait_panel = [&](int pn) { mbar_wait(full0 + slot_of(pn) * 8, phase_of(pn)); };
    auto release = [&](int pn) {
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + slot_of(pn) * 8);
    };
    auto in_pv = [&](int pn) { return pn >= pv_panel0 && pn < pv_panel0 + Cfg::PV_PANELS_PER_WARP; };

    // ---- 1. partial S over this warp's k-steps, all TOKENS tokens (NTILES independent chains).
    float s[Cfg::NTILES][4];
#pragma unroll
    for (int j = 0; j < Cfg::NTILES; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[j][i] = 0.f;
    const int a_row = mtile * 16 + (lane % 8) + 8 * ((lane / 8) % 2);
    auto s_kstep = [&](int pn, int ks) {
      wait_panel(pn);
      const uint32_t k_panel = kv_smem + slot_of(pn) * Cfg::PANEL_BYTES;
      uint32_t qa[4];
      ldmatrix_x4(q_smem + pn * Cfg::Q_PANEL_BYTES + swizzle<Cfg::ROW_BYTES>(a_row, 2 * ks + lane / 16), qa);
#pragma unroll
      for (int h = 0; h < Cfg::NTILES / 2; ++h) {
        // matrix i = tokens 16h + 8(i/2) + 0..7, chunk 2ks + i%2: n8 tiles 2h and 2h+1
        uint32_t kb[4];
        ldmatrix_x4(k_panel + swizzle<Cfg::ROW_BYTES>(16 * h + lane % 8 + 8 * (lane / 16), 2 * ks + (lane / 8) % 2), kb);
        KvOps::mma(s[2 * h], qa, kb[0], kb[1]);
        KvOps::mma(s[2 * h + 1], qa, kb[2], kb[3]);
      }
    };
    static_assert(Cfg::SLICES % Cfg::KSTEPS_PER_PANEL == 0, "a slice keeps one k-step per panel");
    if constexpr (Cfg::FP8 && EMULATED_FP8_MMA) {
      // sm_90 emulates e4m3 MMA with extra registers: rolled, this stays free of spills.
#pragma unroll 1
      for (int gk = slice; gk < Cfg::KSTEPS_TILE; gk += Cfg::SLICES)
        s_kstep(gk / Cfg::KSTEPS_PER_PANEL, gk % Cfg::KSTEPS_PER_PANEL);
    } else {
      // Unrolled: panel and chunk offsets become constants (rolled, the loop was issue-bound
      // on address arithmetic). FP8 slices own 5 or 4 k-steps: the last trip is uniform.
#pragma unroll
      for (int i = 0; i < Cfg::S_KSTEPS_MAX; ++i) {
        if (Cfg::KSTEPS_TILE % Cfg::SLICES != 0 && slice + i * Cfg::SLICES >= Cfg::KSTEPS_TILE) break;
        // k-step slice + i * SLICES of the tile: its panel, and the k-step inside the panel
        s_kstep(i * (Cfg::SLICES / Cfg::KSTEPS_PER_PANEL) + slice / Cfg::KSTEPS_PER_PANEL,
                slice % Cfg::KSTEPS_PER_PANEL);
      }
    }
#pragma unroll
    for (int pn = 0; pn < NUM_PANELS; ++pn)
      if (!in_pv(pn)) release(pn);

    // ---- 2. sum the group's partials (fixed order: every warp gets identical bits).
    named_barrier_sync(group_barrier, Cfg::SLICES * 32);  // the previous tile's reads are done
    float4* mine = s_part + (warp * Cfg::NTILES) * 32 + lane;
#pragma unroll
    for (int j = 0; j < Cfg::NTILES; ++j) mine[j * 32] = make_float4(s[j][0], s[j][1], s[j][2], s[j][3]);
    named_barrier_sync(group_barrier, Cfg::SLICES * 32);
#pragma unroll
    for (int j = 0; j < Cfg::NTILES; ++j) {
      float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int k = 0; k < Cfg::SLICES; ++k) {
        const float4 v = s_part[((mtile * Cfg::SLICES + k) * Cfg::NTILES + j) * 32 + lane];
        t.x += v.x;
        t.y += v.y;
        t.z += v.z;
        t.w += v.w;
      }
      s[j][0] = t.x;
      s[j][1] = t.y;
      s[j][2] = t.z;
      s[j][3] = t.w;
    }

    // ---- 3. online softmax of the 16 rows, in registers (scale folded into exp2).
    if (tok0 + Cfg::TOKENS > min_limit) {
#pragma unroll
      for (int j = 0; j < Cfg::NTILES; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (tok0 + 8 * j + 2 * q4 + (i % 2) >= lim[i / 2]) s[j][i] = -INFINITY;  // select: masks NaN too
    }
    float alpha[2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = m_run[hh];
#pragma unroll
      for (int j = 0; j < Cfg::NTILES; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * hh], s[j][2 * hh + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with no visible token yet keeps m = -inf: exp2 then gets 0 (and alpha 1), not NaN.
      const float m_scaled = mx == -INFINITY ? 0.f : mx * scale[hh];
      alpha[hh] = mx == -INFINITY ? 1.f : fast_exp2((m_run[hh] - mx) * scale[hh]);
      m_run[hh] = mx;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < Cfg::NTILES; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[j][2 * hh + e];
          v = fast_exp2(fmaf(v, scale[hh], -m_scaled));
          sum += v;
        }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l_run[hh] = l_run[hh] * alpha[hh] + sum;
    }
#pragma unroll
    for (int nt = 0; nt < Cfg::PV_NTILES; ++nt) {
      acc[nt][0] *= alpha[0];
      acc[nt][1] *= alpha[0];
      acc[nt][2] *= alpha[1];
      acc[nt][3] *= alpha[1];
    }

    // ---- 4. O += P V over this warp's columns.
#pragma unroll
    for (int i = 0; i < Cfg::PV_PANELS_PER_WARP; ++i) wait_panel(pv_panel0 + i);  // no-op if S saw it
    const bool tail_tile = tok0 + Cfg::TOKENS > kv_len;  // tokens past kv_len may be garbage
    uint32_t pa[Cfg::PV_KSTEPS][4];  // all of P first: S's registers are free before V loads
#pragma unroll
    for (int ks = 0; ks < Cfg::PV_KSTEPS; ++ks) p_fragments<Cfg>(s, ks, pa[ks]);
#pragma unroll
    for (int ks = 0; ks < Cfg::PV_KSTEPS; ++ks) {
      // Masks that zero V of tokens >= kv_len in this thread's B fragments (tail tile only).
      uint32_t vmask[2] = {0xffffffffu, 0xffffffffu};
      if (tail_tile) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          uint32_t m = 0;
          if constexpr (Cfg::FP8) {
            // byte i of fragment register r holds token 32ks + 16r + {2q, 2q+1, 8+2q, 9+2q}[i]
#pragma unroll
            for (int i = 0; i < 4; ++i)
              if (tok0 + Cfg::MMA_K * ks + 16 * r + fp8_token_of_k(4 * q4 + i) < kv_len) m |= 0xffu << (8 * i);
          } else {
            // half i of fragment register r holds token 16ks + 8r + 2q + i
#pragma unroll
            for (int i = 0; i < 2; ++i)
              if (tok0 + Cfg::MMA_K * ks + 8 * r + 2 * q4 + i < kv_len) m |= 0xffffu << (16 * i);
          }
          vmask[r] = m;
        }
      }
#pragma unroll
      for (int gi = 0; gi < Cfg::PV_GROUPS; ++gi) {
        const int col = col0 + 16 * gi;
        const uint32_t v_panel = kv_smem + slot_of(col / PANEL_CHANNELS) * Cfg::PANEL_BYTES;
        uint32_t vb[4], b_even[2], b_odd[2];
        if constexpr (Cfg::FP8) {
          // matrices = tokens 32ks + 8i.., one 16-channel chunk; bytes regrouped by prmt.
          const int chunk = (col % PANEL_CHANNELS) / 16;
          ldmatrix_x4_trans(v_panel + swizzle<Cfg::ROW_BYTES>(Cfg::MMA_K * ks + lane % 8 + 8 * (lane / 8), chunk), vb);
          b_even[0] = prmt(vb[0], vb[1], 0x6420) & vmask[0];
          b_even[1] = prmt(vb[2], vb[3], 0x6420) & vmask[1];
          b_odd[0] = prmt(vb[0], vb[1], 0x7531) & vmask[0];
          b_odd[1] = prmt(vb[2], vb[3], 0x7531) & vmask[1];
        } else {
          // matrices = (tokens 0-7 | 8-15) x (chunk c | c+1)
          const int chunk = (col % PANEL_CHANNELS) / 8;
          ldmatrix_x4_trans(v_panel + swizzle<Cfg::ROW_BYTES>(Cfg::MMA_K * ks + lane % 8 + 8 * ((lane / 8) % 2),
                                                              chunk + lane / 16),
                            vb);
          b_even[0] = vb[0] & vmask[0];
          b_even[1] = vb[1] & vmask[1];
          b_odd[0] = vb[2] & vmask[0];
          b_odd[1] = vb[3] & vmask[1];
        }
        KvOps::mma(acc[2 * gi], pa[ks], b_even[0], b_even[1]);
        KvOps::mma(acc[2 * gi + 1], pa[ks], b_odd[0], b_odd[1]);
      }
    }
#pragma unroll
    for (int i = 0; i < Cfg::PV_PANELS_PER_WARP; ++i) release(pv_panel0 + i);

    ring_slot += NUM_PANELS;  // next tile's panel 0
    if (ring_slot >= Cfg::RING) {
      ring_slot -= Cfg::RING;
      ring_phase ^= 1;
    }
  }

  // ---------------------------------------------------------------- epilogue
  const bool split_mode = p.num_splits > 1;
  const int64_t cta = (static_cast<int64_t>(b) * p.row_tiles + row_tile) * p.num_splits + split;
  // FP8: acc = sum (p * 256) * v_e4m3, so one factor restores kv_scale and the P scale.
  const float out_factor = Cfg::FP8 ? kv_scale / Cfg::P_FP8_SCALE : 1.f;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int row = row0 + 8 * hh;
    const bool has_mass = l_run[hh] > 0.f;
    const float inv = has_mass ? out_factor / l_run[hh] : 0.f;
    if (!geo.valid(row, Cfg::ROWS) && !split_mode) continue;
    const int rg = row_tile * Cfg::ROWS + row;
    const int64_t token = static_cast<int64_t>(b) * p.query_len + rg / p.num_heads;
    const int head = rg % p.num_heads;
    float* part = split_mode ? p.partial_out + (cta * Cfg::ROWS + row) * V_DIM : nullptr;
    OT* out = split_mode ? nullptr : static_cast<OT*>(p.out) + token * p.out_stride_t + head * p.out_stride_h;
#pragma unroll
    for (int gi = 0; gi < Cfg::PV_GROUPS; ++gi) {
      const float* ev = acc[2 * gi];
      const float* od = acc[2 * gi + 1];
      int ch[2];  // this thread's output channels, as two pairs
      float v[2][2];
      if constexpr (Cfg::FP8) {
        // even tile n -> channel 2n, odd tile n -> 2n + 1: four consecutive channels
        ch[0] = col0 + 16 * gi + 4 * q4;
        ch[1] = ch[0] + 2;
        v[0][0] = ev[2 * hh] * inv;
        v[0][1] = od[2 * hh] * inv;
        v[1][0] = ev[2 * hh + 1] * inv;
        v[1][1] = od[2 * hh + 1] * inv;
      } else {
        ch[0] = col0 + 16 * gi + 2 * q4;
        ch[1] = ch[0] + 8;
        v[0][0] = ev[2 * hh] * inv;
        v[0][1] = ev[2 * hh + 1] * inv;
        v[1][0] = od[2 * hh] * inv;
        v[1][1] = od[2 * hh + 1] * inv;
      }
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if (split_mode)
          *reinterpret_cast<float2*>(part + ch[k]) = make_float2(v[k][0], v[k][1]);
        else
          *reinterpret_cast<uint32_t*>(out + ch[k]) = ElemOps<Cfg::OUT>::pack2(v[k][0], v[k][1]);
      }
    }
    if (slice == 0 && q4 == 0) {
      const float lse2 = has_mass ? m_run[hh] * scale[hh] + __log2f(l_run[hh]) : -INFINITY;
      if (split_mode)
        p.partial_lse[cta * Cfg::ROWS + row] = lse2;
      else
        p.lse[token * p.num_heads + head] = lse2 * LN2;
    }
  }
}

}  // namespace mla
