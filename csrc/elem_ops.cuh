// Per-element-type operations: packing floats, the matching mma.sync, and 16-byte conversions.
#pragma once

#include <cstring>

#include "config.cuh"
#include "ptx.cuh"

namespace mla {

template <Elem E>
struct ElemOps;

// The two 16-bit types differ only in their CUDA types, conversions and mma instruction.
template <class T, class T2, T2 (*FROM_FLOATS)(float, float), float2 (*TO_FLOATS)(T2),
          void (*MMA)(float (&)[4], const uint32_t (&)[4], uint32_t, uint32_t)>
struct Elem16Ops {
  using storage = T;
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const T2 v = FROM_FLOATS(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t v) {
    T2 h;
    memcpy(&h, &v, 4);
    return TO_FLOATS(h);
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    MMA(d, a, b0, b1);
  }
};

__device__ __forceinline__ __nv_bfloat162 bf16x2_from_floats(float lo, float hi) {
  return __floats2bfloat162_rn(lo, hi);
}
__device__ __forceinline__ float2 bf16x2_to_floats(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ __half2 f16x2_from_floats(float lo, float hi) { return __floats2half2_rn(lo, hi); }
__device__ __forceinline__ float2 f16x2_to_floats(__half2 v) { return __half22float2(v); }

template <>
struct ElemOps<Elem::BF16>
    : Elem16Ops<__nv_bfloat16, __nv_bfloat162, bf16x2_from_floats, bf16x2_to_floats, mma_bf16_16816> {};
template <>
struct ElemOps<Elem::FP16> : Elem16Ops<__half, __half2, f16x2_from_floats, f16x2_to_floats, mma_f16_16816> {};

// The low (lo) or high (hi) two e4m3 bytes of a register -> f16x2 (the first byte in the low
// half), exact: every e4m3 value is an f16. One F2FP each on sm_89+ and SM12x; the high pair is
// read as the register's upper half (F2FP.F16.E4M3.UNPACK_B R, R.H1), with no shift.
__device__ __forceinline__ uint32_t e4m3x2_lo_to_f16x2(uint32_t bytes) {
  uint32_t h;
  asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.rn.f16x2.e4m3x2 %0, lo; }" : "=r"(h) : "r"(bytes));
  return h;
}
__device__ __forceinline__ uint32_t e4m3x2_hi_to_f16x2(uint32_t bytes) {
  uint32_t h;
  asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.rn.f16x2.e4m3x2 %0, hi; }" : "=r"(h) : "r"(bytes));
  return h;
}

template <>
struct ElemOps<Elem::E4M3> {
  using storage = __nv_fp8_storage_t;
  // Two floats -> two e4m3 bytes (lo in the low byte), saturating to +-448.
  static __device__ __forceinline__ uint16_t pack2(float lo, float hi) {
    return static_cast<uint16_t>(
        __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3));
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    mma_e4m3_16832(d, a, b0, b1);
  }
};


}  // namespace mla
