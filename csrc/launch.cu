// Host side of a decode launch: the KV tensor map over the paged cache, then the dtype dispatch.
#include <cudaTypedefs.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "launch.h"

namespace mla {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(std::string* error) {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status;
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                                             cudaEnableDefault, &status);
    if (err != cudaSuccess || status != cudaDriverEntryPointSuccess || ptr == nullptr)
      failure = "the CUDA driver does not provide cuTensorMapEncodeTiled (driver too old?)";
    else
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  });
  if (!fn) *error = failure;
  return fn;
}

// The cache viewed as a 3-D tensor (channel, token in block, block). One box is 64 channels x
// box_tokens tokens of one block; its 64-channel row is the swizzle span (traps 3 and 4).
std::string make_kv_tensor_map(const DecodeLaunch& L, int tokens_per_tile, CUtensorMap* map) {
  std::string error;
  auto encode = tensor_map_encoder(&error);
  if (!encode) return error;
  const bool fp8 = L.kv == Elem::E4M3;
  const int elem_bytes = fp8 ? 1 : 2;
  const CUtensorMapDataType dtype = fp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                        : (L.kv == Elem::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                              : CU_TENSOR_MAP_DATA_TYPE_FLOAT16);
  const int block_size = L.params.block_size;
  const int box_tokens = block_size < tokens_per_tile ? block_size : tokens_per_tile;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(HEAD_DIM), static_cast<cuuint64_t>(block_size),
                              static_cast<cuuint64_t>(L.num_blocks)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(L.kv_stride_token * elem_bytes),
                                 static_cast<cuuint64_t>(L.kv_stride_block * elem_bytes)};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(PANEL_CHANNELS), static_cast<cuuint32_t>(box_tokens), 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUtensorMapSwizzle swizzle = fp8 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B;
  const CUresult res = encode(map, dtype, 3, const_cast<void*>(L.kv_cache), dims, strides, box,
                              elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res != CUDA_SUCCESS)
    return "cuTensorMapEncodeTiled failed for kv_cache (error " + std::to_string(static_cast<int>(res)) +
           "): check its alignment (16 bytes) and strides";
  return std::string();
}

// Encoding a tensor map is host work on every call; a serving process sees one cache tensor
// per layer, so remember the maps by everything they encode.
std::string cached_kv_tensor_map(const DecodeLaunch& L, int tokens_per_tile, CUtensorMap* map) {
  using Key = std::tuple<const void*, int, int64_t, int, int64_t, int64_t, int>;
  static std::mutex mu;
  static std::map<Key, CUtensorMap> cache;
  constexpr size_t MAX_ENTRIES = 4096;
  const Key key{L.kv_cache, static_cast<int>(L.kv), L.num_blocks, L.params.block_size, L.kv_stride_block,
                L.kv_stride_token, tokens_per_tile};
  std::lock_guard<std::mutex> lock(mu);
  const auto it = cache.find(key);
  if (it != cache.end()) {
    *map = it->second;
    return std::string();
  }
  const std::string err = make_kv_tensor_map(L, tokens_per_tile, map);
  if (!err.empty()) return err;
  if (cache.size() >= MAX_ENTRIES) cache.clear();
  cache.emplace(key, *map);
  return std::string();
}

}  // namespace

std::string launch_decode(const DecodeLaunch& L) {
  const bool fp8 = L.kv == Elem::E4M3;
  const int tokens_per_tile = fp8 ? DecodeConfig<Elem::E4M3, Elem::BF16, Elem::BF16, 16>::TOKENS
                                  : DecodeConfig<Elem::BF16, Elem::BF16, Elem::BF16, 16>::TOKENS;
  CUtensorMap map;
  const std::string err = cached_kv_tensor_map(L, tokens_per_tile, &map);
  if (!err.empty()) return err;
  switch (L.kv) {
    case Elem::BF16:
      return launch_decode_bf16(L, map);
    case Elem::FP16:
      return launch_decode_fp16(L, map);
    case Elem::E4M3:
      return L.q == Elem::E4M3 ? launch_decode_fp8_q8(L, map) : launch_decode_fp8_q16(L, map);
  }
  return "unknown kv dtype";
}

namespace {
template <Elem KV, Elem Q, Elem OUT>
int smem_of(int rows) {
  if (rows == 16) return DecodeConfig<KV, Q, OUT, 16>::SMEM_BYTES;
  if (rows == 32) return DecodeConfig<KV, Q, OUT, 32>::SMEM_BYTES;
  return 0;
}
template <Elem KV, Elem Q, Elem OUT>
int threads_of(int rows) {
  if (rows == 16) return DecodeConfig<KV, Q, OUT, 16>::THREADS;
  if (rows == 32) return DecodeConfig<KV, Q, OUT, 32>::THREADS;
  return 0;
}
}  // namespace

#define MLA_FOR_BUILT_COMBOS(FN, rows)                                                     \
  if (kv == Elem::BF16 && q == Elem::BF16 && out == Elem::BF16)                            \
    return FN<Elem::BF16, Elem::BF16, Elem::BF16>(rows);                                   \
  if (kv == Elem::FP16 && q == Elem::FP16 && out == Elem::FP16)                            \
    return FN<Elem::FP16, Elem::FP16, Elem::FP16>(rows);                                   \
  if (kv == Elem::E4M3 && q == Elem::BF16 && out == Elem::BF16)                            \
    return FN<Elem::E4M3, Elem::BF16, Elem::BF16>(rows);                                   \
  if (kv == Elem::E4M3 && q == Elem::FP16 && out == Elem::FP16)                            \
    return FN<Elem::E4M3, Elem::FP16, Elem::FP16>(rows);                                   \
  if (kv == Elem::E4M3 && q == Elem::E4M3) return FN<Elem::E4M3, Elem::E4M3, Elem::BF16>(rows); \
  return 0;

int decode_smem_bytes(Elem kv, Elem q, Elem out, int rows) { MLA_FOR_BUILT_COMBOS(smem_of, rows) }
int decode_threads(Elem kv, Elem q, Elem out, int rows) { MLA_FOR_BUILT_COMBOS(threads_of, rows) }

}  // namespace mla
