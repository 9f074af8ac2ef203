// Host interface of the kernels, free of torch so the .cu files compile (and are ptxas-checked)
// with nvcc alone. binding.cpp turns tensors into a DecodeLaunch.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "config.cuh"
#include "params.h"

namespace mla {

struct DecodeLaunch {
  DecodeParams params;  // everything but the tensor map
  Elem kv, q, out;
  int rows_per_cta;  // 16 or 32
  // KV cache [num_blocks, block_size, 576]; strides in elements.
  const void* kv_cache;
  int64_t num_blocks;
  int64_t kv_stride_block, kv_stride_token;
  cudaStream_t stream;
};

// Launch the decode kernel (and the split combine when params.num_splits > 1) on the current
// device. Returns an empty string on success, else a message naming what went wrong.
std::string launch_decode(const DecodeLaunch& launch);

// Per-dtype entry points (one translation unit each, compiled in parallel).
std::string launch_decode_bf16(const DecodeLaunch& launch, const CUtensorMap& kv_map);
std::string launch_decode_fp16(const DecodeLaunch& launch, const CUtensorMap& kv_map);
std::string launch_decode_fp8_q16(const DecodeLaunch& launch, const CUtensorMap& kv_map);
std::string launch_decode_fp8_q8(const DecodeLaunch& launch, const CUtensorMap& kv_map);

// Dynamic shared memory one CTA of that configuration uses (0 if the combination is not built).
int decode_smem_bytes(Elem kv, Elem q, Elem out, int rows_per_cta);
int decode_threads(Elem kv, Elem q, Elem out, int rows_per_cta);

// mma.sync BF16 throughput probe for the benchmark's roofline: every warp of `blocks` CTAs of
// 256 threads issues `iterations` x 8 independent m16n8k16 MMAs; `sink` (blocks*256 floats)
// keeps the result alive. FLOPs = blocks * 8 warps * iterations * 8 * 4096.
std::string launch_mma_peak(float* sink, int blocks, int iterations, cudaStream_t stream);

}  // namespace mla
