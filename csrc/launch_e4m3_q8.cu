// FP8 e4m3 cache, e4m3 q with its q_scale, e4m3 MMAs (opt-in: fp8_math="e4m3").
// Its variants are the lines of variants.def whose UNIT is e4m3_q8.
#define MLA_UNIT_e4m3_q8(...) MLA_INSTANTIATE(__VA_ARGS__)
#include "variant_units.h"
