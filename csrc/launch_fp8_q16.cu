// FP8 e4m3 cache with a 16-bit q that the kernel quantises per row (what vLLM sends us).
#include "decode_launch.cuh"

namespace mla {
std::string launch_decode_fp8_q16(const DecodeLaunch& L, const CUtensorMap& kv_map) {
  if (L.q == Elem::BF16) return launch_rows<Elem::E4M3, Elem::BF16, Elem::BF16>(L, kv_map);
  if (L.q == Elem::FP16) return launch_rows<Elem::E4M3, Elem::FP16, Elem::FP16>(L, kv_map);
  return "fp8 cache with 16-bit q: q must be bf16 or fp16";
}
}  // namespace mla
