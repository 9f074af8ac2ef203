// Included by each launch_<UNIT>.cu after it defines MLA_UNIT_<UNIT>(...) as MLA_INSTANTIATE:
// explicitly instantiates the variants.def lines of that unit, and no other.
// The unit list below must match the UNIT column of variants.def (tests/test_kernel_variants.py).
#pragma once

#include "decode_launch.cuh"

#define MLA_INSTANTIATE(KV, Q, OUT, MMA, ROWS)                                                                   \
  template std::string launch_variant<Elem::KV, Elem::Q, Elem::OUT, Elem::MMA, ROWS>(const DecodeLaunch&, const CUtensorMap&); \
  template int variant_max_active_clusters<Elem::KV, Elem::Q, Elem::OUT, Elem::MMA, ROWS>(int, int);

#ifndef MLA_UNIT_bf16
#define MLA_UNIT_bf16(...)
#endif
#ifndef MLA_UNIT_fp16
#define MLA_UNIT_fp16(...)
#endif
#ifndef MLA_UNIT_fp8_q16
#define MLA_UNIT_fp8_q16(...)
#endif
#ifndef MLA_UNIT_fp8_q8
#define MLA_UNIT_fp8_q8(...)
#endif
#ifndef MLA_UNIT_e4m3_q16
#define MLA_UNIT_e4m3_q16(...)
#endif
#ifndef MLA_UNIT_e4m3_q8
#define MLA_UNIT_e4m3_q8(...)
#endif

#define MLA_VARIANT(UNIT, ...) MLA_UNIT_##UNIT(__VA_ARGS__)
namespace mla {
#include "variants.def"
}  // namespace mla
#undef MLA_VARIANT
