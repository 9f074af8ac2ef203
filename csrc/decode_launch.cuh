// Launch one decode configuration (and the combine), with per-device one-time set-up.
#pragma once

#include <atomic>
#include <string>

#include "combine_kernel.cuh"
#include "decode_kernel.cuh"
#include "launch.h"

namespace mla {

inline std::string cuda_error_text(const char* what, cudaError_t err) {
  return std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
}

// Function attributes are per device: remember, per kernel, which devices were configured.
// Tag makes one flag set per kernel (all decode kernels share one function-pointer type).
template <class Tag, class Kernel>
inline cudaError_t ensure_smem_attribute(Kernel kernel, int smem_bytes) {
  static std::atomic<uint64_t> configured{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (1ull << device) : 0;
  if (bit && (configured.load() & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err == cudaSuccess && bit) configured.fetch_or(bit);
  return err;
}

template <Elem OUT>
inline std::string launch_combine(const DecodeLaunch& L, int rows_per_cta) {
  const DecodeParams& d = L.params;
  CombineParams c;
  c.partial_out = d.partial_out;
  c.partial_lse = d.partial_lse;
  c.out = d.out;
  c.out_stride_t = d.out_stride_t;
  c.out_stride_h = d.out_stride_h;
  c.lse = d.lse;
  c.num_heads = d.num_heads;
  c.query_len = d.query_len;
  c.num_rows_total = d.batch * d.rows_per_request;
  c.rows_per_cta = rows_per_cta;
  c.row_tiles = d.row_tiles;
  c.num_splits = d.num_splits;
  const int blocks = ceil_div(c.num_rows_total, COMBINE_WARPS);
  mla_combine_kernel<OUT><<<blocks, COMBINE_WARPS * 32, 0, L.stream>>>(c);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : cuda_error_text("combine launch", err);
}

template <class Cfg>
inline std::string launch_config(const DecodeLaunch& L, const CUtensorMap& kv_map) {
  auto kernel = mla_decode_kernel<Cfg>;
  cudaError_t err = ensure_smem_attribute<Cfg>(kernel, Cfg::SMEM_BYTES);
  if (err != cudaSuccess) return cuda_error_text("cudaFuncSetAttribute(max dynamic shared memory)", err);
  const dim3 grid(L.params.row_tiles, L.params.num_splits, L.params.batch);
  kernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, L.stream>>>(kv_map, L.params);
  err = cudaGetLastError();
  if (err != cudaSuccess) return cuda_error_text("decode kernel launch", err);
  if (L.params.num_splits > 1) return launch_combine<Cfg::OUT>(L, Cfg::ROWS);
  return std::string();
}

// Rows per CTA is the one runtime choice inside a dtype combination.
template <Elem KV, Elem Q, Elem OUT>
inline std::string launch_rows(const DecodeLaunch& L, const CUtensorMap& kv_map) {
  if (L.rows_per_cta == 16) return launch_config<DecodeConfig<KV, Q, OUT, 16>>(L, kv_map);
  if (L.rows_per_cta == 32) return launch_config<DecodeConfig<KV, Q, OUT, 32>>(L, kv_map);
  return "rows_per_cta must be 16 or 32, got " + std::to_string(L.rows_per_cta);
}

}  // namespace mla
