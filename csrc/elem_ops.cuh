// Per-element-type operations: packing floats, the matching mma.sync, and 16-byte conversions.
#pragma once

#include <cstring>

#include "config.cuh"
#include "ptx.cuh"

namespace mla {

template <Elem E>
struct ElemOps;

template <>
struct ElemOps<Elem::BF16> {
  using storage = __nv_bfloat16;
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t v) {
    __nv_bfloat162 h;
    memcpy(&h, &v, 4);
    return __bfloat1622float2(h);
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    mma_bf16_16816(d, a, b0, b1);
  }
};

template <>
struct ElemOps<Elem::FP16> {
  using storage = __half;
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t v) {
    __half2 h;
    memcpy(&h, &v, 4);
    return __half22float2(h);
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    mma_f16_16816(d, a, b0, b1);
  }
};

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
