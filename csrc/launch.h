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
  Elem kv, q, out, mma;
  int rows_per_cta;  // 16 or 32
  int smem_bytes;    // dynamic shared memory to request (0: the variant's own)
  int sm_count;      // of the current device (sizes the combine's grid)
  // The splits of each (request, row tile) launched as one thread block cluster that merges them
  // in shared memory (mla_decode_kernel<Cfg, true, false>, cluster_merge.cuh): no workspace, no
  // combine. (params.split_budget > 0 launches mla_decode_kernel<Cfg, false, true> instead: length-
  // balanced splits over split_budget + batch slots per row tile, merged by the combine.)
  bool cluster_merge;
  // KV cache [num_blocks, block_size, 576]; strides in elements.
  const void* kv_cache;
  int64_t num_blocks;
  int64_t kv_stride_block, kv_stride_token;
  cudaStream_t stream;
};

// Launch the decode kernel (and the split combine when params.num_splits > 1, unless
// cluster_merge) on the current device. Returns an empty string on success, else a message
// naming what went wrong.
std::string launch_decode(const DecodeLaunch& launch);

// One compiled variant of csrc/variants.def (explicitly instantiated in launch_<UNIT>.cu).
template <Elem KV, Elem Q, Elem OUT, Elem MMA, int ROWS>
std::string launch_variant(const DecodeLaunch& launch, const CUtensorMap& kv_map);

template <Elem KV, Elem Q, Elem OUT, Elem MMA, int ROWS>
int variant_max_active_clusters(int splits, int smem_bytes);

// Clusters of `splits` CTAs of a variant the current device holds at once (0: the variant's splits
// cannot merge in a cluster there, or variants.def does not list it).
int decode_max_active_clusters(Elem kv, Elem q, Elem out, Elem mma, int rows_per_cta, int splits, int smem_bytes);

// Facts of a compiled variant (0 if variants.def does not list it).
int decode_smem_bytes(Elem kv, Elem q, Elem out, Elem mma, int rows_per_cta);
int decode_tokens_per_tile(Elem kv, Elem q, Elem out, Elem mma, int rows_per_cta);

// mma.sync BF16 throughput probe for the benchmark's roofline: every warp of `blocks` CTAs of
// 256 threads issues `iterations` x 8 independent m16n8k16 MMAs; `sink` (blocks*256 floats)
// keeps the result alive. FLOPs = blocks * 8 warps * iterations * 8 * 4096.
std::string launch_mma_peak(float* sink, int blocks, int iterations, cudaStream_t stream);

}  // namespace mla
