// FP8 e4m3 cache with an already quantised e4m3 q and its q_scale, 16-bit MMAs (the default).
// Its variants are the lines of variants.def whose UNIT is fp8_q8.
#define MLA_UNIT_fp8_q8(...) MLA_INSTANTIATE(__VA_ARGS__)
#include "variant_units.h"
