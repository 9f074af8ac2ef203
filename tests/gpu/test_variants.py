"""Every compiled kernel variant (csrc/variants.def, through mla_plugin.kernel_variants: the one
list) runs at every page size of coverage.PAGE_SIZES against the fp32 reference with the
derived bounds of its path, and launches exactly that variant. The coverage test itself
(test_variant_coverage.py) runs last and fails listing any variant the suite never launched."""

from __future__ import annotations

import pytest

from mla_plugin import dispatch, kernel_variants

from .cases import (assert_close, case_for_variant, cluster_capable, last_plan, make_inputs, measure, run_op,
                    tuning_override)
from .coverage import PAGE_SIZES

pytestmark = [pytest.mark.gpu, pytest.mark.mutation_check]


def variant_id(v) -> str:
    return f"{v.kv}-q{v.q}-o{v.out}-mma{v.mma}-r{v.rows}"


# (forced split count, max_cluster_splits override) per case. The plan's split count for this
# batch of 4 requests (tens of splits, most of them empty for all but the long request: merged by
# the combine kernel); 5 forced splits of one tile at least: the long request fills all 5, the
# page-boundary one 2, the shortest 1, the empty one none, merged inside a cluster of 5 where the
# variant can (csrc/decode/cluster_merge.cuh), and by the combine kernel with clusters turned off;
# and the plan's splits balanced over the batch's lengths (the variant's balanced instantiation:
# the long request takes twice the plan's splits, the others one each).
SPLITS = {"plan": (None, None, None), "5": ("5", None, None), "5-combine": ("5", 0, None),
          "balanced": (None, 0, 64)}


@pytest.mark.parametrize("splits", sorted(SPLITS), ids=lambda s: f"splits-{s}")
@pytest.mark.parametrize("block_size", PAGE_SIZES, ids=lambda bs: f"bs{bs}")
@pytest.mark.parametrize("variant", kernel_variants.variants(), ids=variant_id)
def test_variant_matches_reference(variant, block_size, splits, error_log, monkeypatch):
    forced, max_cluster, max_balanced = SPLITS[splits]
    if forced:
        monkeypatch.setenv(dispatch.SPLITS_ENV, forced)
    case = case_for_variant(variant, block_size, seed=block_size)
    inp = make_inputs(case)
    with tuning_override(max_cluster_splits=max_cluster, max_balanced_splits=max_balanced, ragged_headroom=2):
        out, lse = run_op(case, inp)
    plan = last_plan()
    assert plan.variant == variant, f"{case}: launched {plan.variant}, wanted {variant}"
    assert plan.num_splits > 1, f"{case}: the 1200-token request should split (plan {plan})"
    if forced:
        assert plan.num_splits == int(forced), plan
        can_cluster = cluster_capable(plan) and max_cluster != 0
        assert plan.cluster_merge == can_cluster, f"{case}: cluster_merge {plan.cluster_merge}, expected {can_cluster}"
    else:
        assert not plan.cluster_merge, plan
        assert (plan.split_budget > 0) == (max_balanced is not None), f"{case}: split_budget {plan.split_budget}"
    err = measure(case, inp, out, lse)
    error_log(case, err)
    assert_close(case, err)
