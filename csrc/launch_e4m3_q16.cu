// FP8 e4m3 cache, 16-bit q quantised per row to e4m3, e4m3 MMAs (opt-in: fp8_math="e4m3").
// Its variants are the lines of variants.def whose UNIT is e4m3_q16.
#define MLA_UNIT_e4m3_q16(...) MLA_INSTANTIATE(__VA_ARGS__)
#include "variant_units.h"
