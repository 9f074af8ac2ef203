// FP8 e4m3 cache with an already quantised e4m3 q and its per-tensor q_scale.
#include "decode_launch.cuh"

namespace mla {
std::string launch_decode_fp8_q8(const DecodeLaunch& L, const CUtensorMap& kv_map) {
  if (L.out == Elem::BF16) return launch_rows<Elem::E4M3, Elem::E4M3, Elem::BF16>(L, kv_map);
  if (L.out == Elem::FP16) return launch_rows<Elem::E4M3, Elem::E4M3, Elem::FP16>(L, kv_map);
  return "fp8 q: out must be bf16 or fp16";
}
}  // namespace mla
