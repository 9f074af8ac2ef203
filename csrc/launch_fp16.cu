// FP16 cache, FP16 q, FP16 out (models served with --dtype float16 and an "auto" cache).
#include "decode_launch.cuh"

namespace mla {
std::string launch_decode_fp16(const DecodeLaunch& L, const CUtensorMap& kv_map) {
  return launch_rows<Elem::FP16, Elem::FP16, Elem::FP16>(L, kv_map);
}
}  // namespace mla
