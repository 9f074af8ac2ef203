// Launch one decode variant (and the split combine, unless its splits merge inside a cluster), with
// per-device one-time set-up. Plain stream order: programmatic dependent launch measured slower
// (csrc/README.md).
#pragma once

#include <atomic>
#include <string>

#include "combine_kernel.cuh"
#include "decode/kernel.cuh"
#include "launch.h"

namespace mla {

inline std::string cuda_error_text(const char* what, cudaError_t err) {
  return std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
}

// Function attributes are per device: remember, per kernel, which devices are set and to what.
// Tag makes one flag set per kernel (all decode kernels share one function-pointer type). A
// device is always set to the largest size asked for on any device so far, so a device set
// before a larger request (SM12x residency emulation) is set again, never left short.
template <class Tag, class Kernel>
inline cudaError_t ensure_smem_attribute(Kernel kernel, int smem_bytes) {
  static std::atomic<uint64_t> configured{0};
  static std::atomic<int> configured_bytes{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (1ull << device) : 0;
  if (bit && (configured.load() & bit) && configured_bytes.load() >= smem_bytes) return cudaSuccess;
  const int bytes = smem_bytes > configured_bytes.load() ? smem_bytes : configured_bytes.load();
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && bit) {
    if (bytes > configured_bytes.load()) {
      configured.store(0);  // the other devices still have the smaller limit
      configured_bytes.store(bytes);
    }
    configured.fetch_or(bit);
  }
  return err;
}

// The cluster instantiation's own flag set for ensure_smem_attribute.
template <class Cfg>
struct ClusterTag {};
// ... and the balanced instantiation's.
template <class Cfg>
struct BalancedTag {};

// A launch of `grid` whose (1, splits, 1) CTAs of each (request, row tile) are one cluster; `attr`
// holds the cluster shape and must outlive the config.
inline cudaLaunchConfig_t split_cluster_config(dim3 grid, int threads, int smem, cudaStream_t stream, int splits,
                                               cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = static_cast<size_t>(smem);
  config.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = 1;
  attr->val.clusterDim.y = static_cast<unsigned>(splits);
  attr->val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  return config;
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
  c.seq_lens = d.seq_lens;
  c.kv_capacity = d.max_blocks * d.block_size;
  c.min_tiles_per_split = d.min_tiles_per_split;
  c.split_budget = d.split_budget;
  c.batch = d.batch;
  if (c.num_splits > COMBINE_MAX_SPLITS)
    return "num_splits " + std::to_string(c.num_splits) + " exceeds the combine's " + std::to_string(COMBINE_MAX_SPLITS);
  // Enough CTAs to cover the GPU twice: many rows keep each row in one CTA, a few rows split
  // their channels (and so their splits' reads) over up to COMBINE_MAX_CHUNKS CTAs.
  c.chunks = 1;
  while (c.chunks < COMBINE_MAX_CHUNKS && c.num_rows_total * c.chunks < 2 * L.sm_count && c.chunks < c.num_splits)
    c.chunks *= 2;
  const dim3 grid(c.num_rows_total, c.chunks);
  mla_combine_kernel<OUT><<<grid, COMBINE_THREADS, 0, L.stream>>>(c);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : cuda_error_text("combine launch", err);
}

template <class Cfg>
inline std::string launch_config(const DecodeLaunch& L, const CUtensorMap& kv_map) {
  const int smem = L.smem_bytes > Cfg::SMEM_BYTES ? L.smem_bytes : Cfg::SMEM_BYTES;
  const dim3 grid(L.params.row_tiles, L.params.num_splits, L.params.batch);
  cudaError_t err;
  if (L.cluster_merge) {
    if (L.params.split_budget != 0) return "cluster_merge takes no split_budget (balanced splits merge by the combine)";
    // The splits of a (request, row tile) are one cluster: they merge in shared memory.
    if (!Cfg::CLUSTER_MERGE || L.params.num_splits < 2 || L.params.num_splits > MAX_CLUSTER_SPLITS)
      return "cluster_merge needs 2.." + std::to_string(MAX_CLUSTER_SPLITS) +
             " splits and a variant whose ring holds the merge; got num_splits " +
             std::to_string(L.params.num_splits);
    auto kernel = mla_decode_kernel<Cfg, Cfg::CLUSTER_MERGE, false>;
    err = ensure_smem_attribute<ClusterTag<Cfg>>(kernel, smem);
    if (err != cudaSuccess) return cuda_error_text("cudaFuncSetAttribute(max dynamic shared memory)", err);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config =
        split_cluster_config(grid, Cfg::THREADS, smem, L.stream, L.params.num_splits, &attr);
    err = cudaLaunchKernelEx(&config, kernel, kv_map, L.params);
    if (err != cudaSuccess) return cuda_error_text("decode kernel launch (cluster)", err);
    return std::string();
  }
  if (L.params.split_budget > 0) {
    // Balanced splits: split_budget + batch slots per row tile (balanced_slot), the requests'
    // splits end to end, rather than num_splits per request.
    if (L.params.num_splits < 2) return "split_budget needs num_splits > 1 (the combine merges the splits)";
    auto kernel = mla_decode_kernel<Cfg, false, true>;
    err = ensure_smem_attribute<BalancedTag<Cfg>>(kernel, smem);
    if (err != cudaSuccess) return cuda_error_text("cudaFuncSetAttribute(max dynamic shared memory)", err);
    const dim3 slots(L.params.row_tiles, L.params.split_budget + L.params.batch, 1);
    kernel<<<slots, Cfg::THREADS, smem, L.stream>>>(kv_map, L.params);
  } else {
    auto kernel = mla_decode_kernel<Cfg, false, false>;
    err = ensure_smem_attribute<Cfg>(kernel, smem);
    if (err != cudaSuccess) return cuda_error_text("cudaFuncSetAttribute(max dynamic shared memory)", err);
    kernel<<<grid, Cfg::THREADS, smem, L.stream>>>(kv_map, L.params);
  }
  err = cudaGetLastError();
  if (err != cudaSuccess) return cuda_error_text("decode kernel launch", err);
  if (L.params.num_splits > 1) return launch_combine<Cfg::OUT>(L, Cfg::ROWS);
  return std::string();
}

// How many clusters of `splits` CTAs of the variant (at `smem_bytes` of dynamic shared memory)
// the current device holds at once; 0 where the variant cannot merge in a cluster.
template <class Cfg>
inline int max_active_clusters_of(int splits, int smem_bytes) {
  if (!Cfg::CLUSTER_MERGE || splits < 2 || splits > MAX_CLUSTER_SPLITS) return 0;
  auto kernel = mla_decode_kernel<Cfg, Cfg::CLUSTER_MERGE, false>;
  const int smem = smem_bytes > Cfg::SMEM_BYTES ? smem_bytes : Cfg::SMEM_BYTES;
  if (ensure_smem_attribute<ClusterTag<Cfg>>(kernel, smem) != cudaSuccess) return 0;
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t config = split_cluster_config(dim3(1, splits, 1), Cfg::THREADS, smem, nullptr, splits, &attr);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
    // No answer (e.g. a device without cluster launch): its splits merge by the combine kernel.
    (void)cudaGetLastError();
    return 0;
  }
  return clusters;
}

// The variant a line of variants.def names.
template <Elem KV, Elem Q, Elem OUT, Elem MMA, int ROWS>
std::string launch_variant(const DecodeLaunch& L, const CUtensorMap& kv_map) {
  return launch_config<DecodeConfig<KV, Q, OUT, MMA, ROWS>>(L, kv_map);
}
template <Elem KV, Elem Q, Elem OUT, Elem MMA, int ROWS>
int variant_max_active_clusters(int splits, int smem_bytes) {
  return max_active_clusters_of<DecodeConfig<KV, Q, OUT, MMA, ROWS>>(splits, smem_bytes);
}

}  // namespace mla
