"""Every compiled kernel variant (csrc/variants.def, through mla_plugin.kernel_variants: the one
list) runs at every page size of coverage.PAGE_SIZES against the fp32 reference with the
derived bounds of its path, and launches exactly that variant. The coverage test itself
(test_variant_coverage.py) runs last and fails listing any variant the suite never launched."""

from __future__ import annotations

import pytest

from mla_plugin import kernel_variants

from .cases import assert_close, case_for_variant, last_plan, make_inputs, measure, run_op
from .coverage import PAGE_SIZES

pytestmark = [pytest.mark.gpu, pytest.mark.mutation_check]


def variant_id(v) -> str:
    return f"{v.kv}-q{v.q}-o{v.out}-mma{v.mma}-r{v.rows}"


@pytest.mark.parametrize("block_size", PAGE_SIZES, ids=lambda bs: f"bs{bs}")
@pytest.mark.parametrize("variant", kernel_variants.variants(), ids=variant_id)
def test_variant_matches_reference(variant, block_size, error_log):
    case = case_for_variant(variant, block_size, seed=block_size)
    inp = make_inputs(case)
    out, lse = run_op(case, inp)
    plan = last_plan()
    assert plan.variant == variant, f"{case}: launched {plan.variant}, wanted {variant}"
    assert plan.num_splits > 1, f"{case}: the 1200-token request should split (plan {plan})"
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
