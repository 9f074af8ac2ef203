// BF16 cache, BF16 q, BF16 out (trap 1: this unit instantiates BF16 element types only).
#include "decode_launch.cuh"

namespace mla {
std::string launch_decode_bf16(const DecodeLaunch& L, const CUtensorMap& kv_map) {
  return launch_rows<Elem::BF16, Elem::BF16, Elem::BF16>(L, kv_map);
}
}  // namespace mla
