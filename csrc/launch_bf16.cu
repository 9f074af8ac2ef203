// BF16 cache, BF16 q and out (trap 1: this unit instantiates BF16 element types only).
// Its variants are the lines of variants.def whose UNIT is bf16.
#define MLA_UNIT_bf16(...) MLA_INSTANTIATE(__VA_ARGS__)
#include "variant_units.h"
