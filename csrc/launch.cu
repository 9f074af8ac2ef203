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
// box_tokens tokens of one block; its 64-channel row is the swizzle span (traps 3 and 4). Where
// whole_tile_box() holds, a 4-D view (channel in panel, token in block, panel, block): its box is
// a tile's 9 panels, landing in shared memory as 9 panel boxes would, one after the other.
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
  const cuuint64_t token_stride = static_cast<cuuint64_t>(L.kv_stride_token * elem_bytes);
  const cuuint64_t block_stride = static_cast<cuuint64_t>(L.kv_stride_block * elem_bytes);
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUtensorMapSwizzle swizzle = fp8 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B;
  // 3-D (channel, token, block); for whole tiles 4-D, the channel dimension split into
  // (channel in panel, panel). The arrays hold the larger rank.
  const bool whole_tile = whole_tile_box(L.kv, L.mma, block_size);
  const cuuint32_t rank = whole_tile ? 4 : 3;
  cuuint64_t dims[4] = {static_cast<cuuint64_t>(HEAD_DIM), static_cast<cuuint64_t>(block_size),
                        static_cast<cuuint64_t>(L.num_blocks), 1};
  cuuint64_t strides[3] = {token_stride, block_stride, block_stride};
  cuuint32_t box[4] = {static_cast<cuuint32_t>(PANEL_CHANNELS), static_cast<cuuint32_t>(box_tokens), 1, 1};
  if (whole_tile) {
    dims[0] = PANEL_CHANNELS;
    dims[2] = NUM_PANELS;
    dims[3] = static_cast<cuuint64_t>(L.num_blocks);
    strides[1] = static_cast<cuuint64_t>(PANEL_CHANNELS * elem_bytes);
    box[2] = NUM_PANELS;
  }
  const CUresult res = encode(map, dtype, rank, const_cast<void*>(L.kv_cache), dims, strides, box, elem_strides,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res != CUDA_SUCCESS)
    return "cuTensorMapEncodeTiled failed for kv_cache (error " + std::to_string(static_cast<int>(res)) +
           "): check its alignment (16 bytes) and strides";
  return std::string();
}

// Encoding a tensor map is host work on every call; a serving process sees one cache tensor
// per layer, so remember the maps by everything they encode (the 4-D view included: the same
// cache tensor gets a 3-D map for e4m3 MMAs and a 4-D one for 16-bit MMAs).
std::string cached_kv_tensor_map(const DecodeLaunch& L, int tokens_per_tile, CUtensorMap* map) {
  using Key = std::tuple<const void*, int, int64_t, int, int64_t, int64_t, int, bool>;
  static std::mutex mu;
  static std::map<Key, CUtensorMap> cache;
  constexpr size_t MAX_ENTRIES = 4096;
  const Key key{L.kv_cache, static_cast<int>(L.kv), L.num_blocks, L.params.block_size, L.kv_stride_block,
                L.kv_stride_token, tokens_per_tile, whole_tile_box(L.kv, L.mma, L.params.block_size)};
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

#define MLA_MATCH(KV, Q, OUT, MMA, ROWS)                                                      \
  (kv == Elem::KV && q == Elem::Q && out == Elem::OUT && mma == Elem::MMA && rows == ROWS)

std::string launch_decode(const DecodeLaunch& L) {
  CUtensorMap map;
  const std::string err = cached_kv_tensor_map(L, TILE_TOKENS, &map);
  if (!err.empty()) return err;
  const Elem kv = L.kv, q = L.q, out = L.out, mma = L.mma;
  const int rows = L.rows_per_cta;
#define MLA_VARIANT(UNIT, KV, Q, OUT, MMA, ROWS) \
  if (MLA_MATCH(KV, Q, OUT, MMA, ROWS)) return launch_variant<Elem::KV, Elem::Q, Elem::OUT, Elem::MMA, ROWS>(L, map);
#include "variants.def"
#undef MLA_VARIANT
  return "no compiled decode variant for kv " + std::to_string(static_cast<int>(kv)) + ", q " +
         std::to_string(static_cast<int>(q)) + ", out " + std::to_string(static_cast<int>(out)) + ", mma " +
         std::to_string(static_cast<int>(mma)) + ", rows " + std::to_string(rows) + " (csrc/variants.def)";
}

// Facts of a variant, straight from its DecodeConfig (no kernel instantiated here).
int decode_smem_bytes(Elem kv, Elem q, Elem out, Elem mma, int rows) {
#define MLA_VARIANT(UNIT, KV, Q, OUT, MMA, ROWS) \
  if (MLA_MATCH(KV, Q, OUT, MMA, ROWS)) return DecodeConfig<Elem::KV, Elem::Q, Elem::OUT, Elem::MMA, ROWS>::SMEM_BYTES;
#include "variants.def"
#undef MLA_VARIANT
  return 0;
}

int decode_max_active_clusters(Elem kv, Elem q, Elem out, Elem mma, int rows, int splits, int smem_bytes) {
#define MLA_VARIANT(UNIT, KV, Q, OUT, MMA, ROWS) \
  if (MLA_MATCH(KV, Q, OUT, MMA, ROWS))          \
    return variant_max_active_clusters<Elem::KV, Elem::Q, Elem::OUT, Elem::MMA, ROWS>(splits, smem_bytes);
#include "variants.def"
#undef MLA_VARIANT
  return 0;
}

int decode_tokens_per_tile(Elem kv, Elem q, Elem out, Elem mma, int rows) {
#define MLA_VARIANT(UNIT, KV, Q, OUT, MMA, ROWS) \
  if (MLA_MATCH(KV, Q, OUT, MMA, ROWS)) return DecodeConfig<Elem::KV, Elem::Q, Elem::OUT, Elem::MMA, ROWS>::TOKENS;
#include "variants.def"
#undef MLA_VARIANT
  return 0;
}

#undef MLA_MATCH

}  // namespace mla
