// FP16 cache, FP16 q and out (models served with --dtype float16 and an "auto" cache).
// Its variants are the lines of variants.def whose UNIT is fp16.
#define MLA_UNIT_fp16(...) MLA_INSTANTIATE(__VA_ARGS__)
#include "variant_units.h"
