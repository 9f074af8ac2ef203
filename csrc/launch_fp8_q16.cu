// FP8 e4m3 cache, 16-bit q (what vLLM sends us), 16-bit MMAs on the exactly converted cache (the default).
// Its variants are the lines of variants.def whose UNIT is fp8_q16.
#define MLA_UNIT_fp8_q16(...) MLA_INSTANTIATE(__VA_ARGS__)
#include "variant_units.h"
