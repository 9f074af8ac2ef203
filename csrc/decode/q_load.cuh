// Phase 1: Q. The math warps stage the CTA's query rows in shared memory as MMA elements (with
// the per-row scale an FP8 path needs), then each warp copies the A fragments of its k-steps
// into registers, where they stay for the whole CTA. The staging area overlaps the KV ring's
// last slots: the warps then release it (q_free) to the producer.
#pragma once

#include "../elem_ops.cuh"
#include "../params.h"
#include "geometry.cuh"
#include "smem.cuh"

namespace mla {

constexpr int Q_E4M3_EXPONENT = 8;   // e4m3 q: a row's |q| max lands in [2^7, 2^8) after scaling
constexpr int Q_F16_EXPONENT = 15;   // bf16 q -> f16: a row's |q| max lands in [2^14, 2^15)

// The power-of-two scale that puts a row's |max| in [2^(E-1), 2^E): exact, reproducible, and
// no element can saturate. {scale, 1/scale}; 1 for an all-zero row.
__device__ __forceinline__ float2 pow2_row_scale(float amax, int target_exponent) {
  if (!(amax > 0.f)) return make_float2(1.f, 1.f);
  int exponent = 0;
  frexpf(amax, &exponent);  // amax = m * 2^exponent, m in [0.5, 1)
  return make_float2(ldexpf(1.f, target_exponent - exponent), ldexpf(1.f, exponent - target_exponent));
}

// A thread's share of its q row (units k = sub + Q_THREADS_PER_ROW k of 8 channels: 16 bytes
// of 16-bit q, or the low 8 of e4m3 q; zeros for a padding row), read straight from global
// memory at the kernel's start: the read then overlaps the request's seq_lens read instead of
// following it (csrc/README.md: Q was staged only ~5 us after the CTA started).
template <class Cfg>
struct QUnits {
  uint4 v[Cfg::Q_UNITS_PER_THREAD];
};

template <class Cfg>
__device__ __forceinline__ QUnits<Cfg> load_q_units(const DecodeParams& p, int b, const RowIndex& rows) {
  using QT = typename ElemOps<Cfg::QIN>::storage;
  const int row = threadIdx.x / Cfg::Q_THREADS_PER_ROW;
  const int sub = threadIdx.x % Cfg::Q_THREADS_PER_ROW;
  const bool valid = rows.valid(row, Cfg::ROWS);
  const int64_t token = valid ? rows.token(b, row, Cfg::ROWS) : 0;
  const int h = valid ? rows.head(row, Cfg::ROWS) : 0;
  const QT* nope = static_cast<const QT*>(p.q_nope) + token * p.q_nope_stride_t + h * p.q_nope_stride_h;
  const QT* pe = static_cast<const QT*>(p.q_pe) + token * p.q_pe_stride_t + h * p.q_pe_stride_h;
  constexpr int NOPE_UNITS = V_DIM / 8;
  QUnits<Cfg> units;
#pragma unroll
  for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
    const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
    const QT* src = u < NOPE_UNITS ? nope + 8 * u : pe + 8 * (u - NOPE_UNITS);
    if constexpr (ElemInfo<Cfg::QIN>::BYTES == 2) {
      units.v[k] = valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
    } else {
      const uint2 w = valid ? *reinterpret_cast<const uint2*>(src) : make_uint2(0, 0);
      units.v[k] = make_uint4(w.x, w.y, 0, 0);
    }
  }
  return units;
}

// Stage the tile's rows from the units: row r at OFF_Q + r * Q_ROW_BYTES, channel c at
// c * MMA_BYTES. Writes the per-row softmax scale (log2 units, q and kv dequantisation folded
// in) to the row stats.
template <class Cfg>
__device__ __forceinline__ void stage_q(const DecodeParams& p, uint8_t* smem, const QUnits<Cfg>& units,
                                        float kv_scale) {
  using QOps = ElemOps<Cfg::QIN>;
  const int tid = threadIdx.x;
  const int row = tid / Cfg::Q_THREADS_PER_ROW;
  const int sub = tid % Cfg::Q_THREADS_PER_ROW;
  uint8_t* q_row = smem + Cfg::OFF_Q + row * Cfg::Q_ROW_BYTES;
  auto unit_dst = [&](int u) { return q_row + 8 * u * Cfg::MMA_BYTES; };  // unit u = channels [8u, 8u+8)

  float row_scale = p.softmax_scale_log2 * (Cfg::FP8_CACHE ? kv_scale : 1.f);
  if constexpr (Cfg::QIN == Cfg::MMA) {
    // Same element type: copy (16-bit caches; an FP8 q into e4m3 MMAs).
#pragma unroll
    for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
      const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
      if constexpr (ElemInfo<Cfg::QIN>::BYTES == 2) {
        *reinterpret_cast<uint4*>(unit_dst(u)) = units.v[k];
      } else {
        *reinterpret_cast<uint2*>(unit_dst(u)) = make_uint2(units.v[k].x, units.v[k].y);
      }
    }
    if constexpr (Cfg::Q_IS_FP8) row_scale *= p.q_scale_ptr ? __ldg(p.q_scale_ptr) : p.q_scale;
  } else if constexpr (Cfg::QIN == Elem::E4M3) {
    // An FP8 q into f16 MMAs: every e4m3 value is an f16, so the conversion is exact.
#pragma unroll
    for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
      const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
      const uint2 v = make_uint2(units.v[k].x, units.v[k].y);
      *reinterpret_cast<uint4*>(unit_dst(u)) = make_uint4(e4m3x2_lo_to_f16x2(v.x), e4m3x2_hi_to_f16x2(v.x),
                                                          e4m3x2_lo_to_f16x2(v.y), e4m3x2_hi_to_f16x2(v.y));
    }
    row_scale *= p.q_scale_ptr ? __ldg(p.q_scale_ptr) : p.q_scale;
  } else {
    // A 16-bit q into another element type: scale each row by a power of two (exact) to place
    // its max where the target type holds every element (f16: [2^14, 2^15), so every element
    // down to 2^-29 of the row max stays a normal f16 with bf16's 8 bits exact; e4m3: [2^7,
    // 2^8), nothing saturates), fold the scale into the softmax scale, then convert.
    uint4 v[Cfg::Q_UNITS_PER_THREAD];
    float amax = 0.f;
#pragma unroll
    for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
      const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
      v[k] = units.v[k];
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
    const float2 sc = pow2_row_scale(amax, Cfg::E4M3_MMA ? Q_E4M3_EXPONENT : Q_F16_EXPONENT);
#pragma unroll
    for (int k = 0; k < Cfg::Q_UNITS_PER_THREAD; ++k) {
      const int u = sub + k * Cfg::Q_THREADS_PER_ROW;
      const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
      if constexpr (Cfg::E4M3_MMA) {
        uint32_t packed[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const float2 f0 = QOps::unpack2(w[2 * i]);
          const float2 f1 = QOps::unpack2(w[2 * i + 1]);
          const uint32_t lo = ElemOps<Elem::E4M3>::pack2(f0.x * sc.x, f0.y * sc.x);
          const uint32_t hi = ElemOps<Elem::E4M3>::pack2(f1.x * sc.x, f1.y * sc.x);
          packed[i] = lo | (hi << 16);
        }
        *reinterpret_cast<uint2*>(unit_dst(u)) = make_uint2(packed[0], packed[1]);
      } else {
        uint32_t packed[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = QOps::unpack2(w[i]);
          packed[i] = ElemOps<Cfg::MMA>::pack2(f.x * sc.x, f.y * sc.x);
        }
        *reinterpret_cast<uint4*>(unit_dst(u)) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
      }
    }
    row_scale *= sc.y;
  }
  if (sub == 0) row_stats<Cfg>(smem).scale[row] = row_scale;
}

// The A fragment of m-tile `mtile` for k-step gk of the tile, in the channel order the K
// fragments of the same path hold (see scores.cuh).
template <class Cfg>
__device__ __forceinline__ void q_fragment(const uint8_t* smem, int mtile, int gk, uint32_t (&qa)[4]) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, q4 = lane % 4;
  const uint8_t* row0 = smem + Cfg::OFF_Q + (mtile * 16 + g) * Cfg::Q_ROW_BYTES;
  const uint8_t* row8 = row0 + 8 * Cfg::Q_ROW_BYTES;
  auto word = [](const uint8_t* row, int byte) { return *reinterpret_cast<const uint32_t*>(row + byte); };
  const int c0 = gk * Cfg::MMA_K;  // first channel of the k-step
  if constexpr (Cfg::CONVERT_KV) {
    // K holds channels 4q..4q+3 at k positions {2q, 2q+1, 2q+8, 2q+9}: so does Q.
    const uint2 r0 = *reinterpret_cast<const uint2*>(row0 + (c0 + 4 * q4) * 2);
    const uint2 r8 = *reinterpret_cast<const uint2*>(row8 + (c0 + 4 * q4) * 2);
    qa[0] = r0.x;
    qa[1] = r8.x;
    qa[2] = r0.y;
    qa[3] = r8.y;
  } else if constexpr (Cfg::E4M3_MMA) {
    // k32: a0 = row g bytes 4q..4q+3, a2 = bytes 16+4q.. (natural channel order)
    qa[0] = word(row0, c0 + 4 * q4);
    qa[1] = word(row8, c0 + 4 * q4);
    qa[2] = word(row0, c0 + 16 + 4 * q4);
    qa[3] = word(row8, c0 + 16 + 4 * q4);
  } else {
    // k16: a0 = row g channels 2q, 2q+1; a2 = channels 8+2q, 9+2q
    qa[0] = word(row0, (c0 + 2 * q4) * 2);
    qa[1] = word(row8, (c0 + 2 * q4) * 2);
    qa[2] = word(row0, (c0 + 8 + 2 * q4) * 2);
    qa[3] = word(row8, (c0 + 8 + 2 * q4) * 2);
  }
}

// The A fragments of warp (mtile, slice) for its k-steps slice + SLICES * i, into registers.
template <class Cfg>
__device__ __forceinline__ void load_q_fragments(const uint8_t* smem, int mtile, int slice,
                                                 uint32_t (&qf)[Cfg::S_KSTEPS_MAX][4]) {
#pragma unroll
  for (int i = 0; i < Cfg::S_KSTEPS_MAX; ++i) {
    const int gk = slice + Cfg::SLICES * i;
    if (Cfg::KSTEPS_TILE % Cfg::SLICES != 0 && gk >= Cfg::KSTEPS_TILE) break;  // e4m3: 5 or 4 k-steps
    q_fragment<Cfg>(smem, mtile, gk, qf[i]);
  }
}

}  // namespace mla
