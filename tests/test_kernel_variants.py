"""The one list of kernel variants (csrc/variants.def) against everything derived from it: the
translation units, variant_units.h's unit list, build.KERNEL_SOURCES and dispatch's names."""

from __future__ import annotations

import re

import pytest

from mla_plugin import _paths, build, dispatch, kernel_variants
from mla_plugin.kernel_variants import Variant


def test_every_unit_has_its_translation_unit_and_build_source():
    csrc = _paths.csrc_dir()
    for unit in kernel_variants.units():
        assert (csrc / f"launch_{unit}.cu").is_file(), f"variants.def names unit {unit}: no launch_{unit}.cu"
        assert f"launch_{unit}.cu" in build.KERNEL_SOURCES
    stray = {p.name for p in csrc.glob("launch_*.cu")} - {f"launch_{u}.cu" for u in kernel_variants.units()}
    assert not stray, f"translation units no variants.def line names: {sorted(stray)}"


def test_each_unit_instantiates_its_own_variants_only():
    csrc = _paths.csrc_dir()
    for unit in kernel_variants.units():
        text = (csrc / f"launch_{unit}.cu").read_text()
        assert re.search(rf"#define MLA_UNIT_{unit}\(\.\.\.\) MLA_INSTANTIATE\(__VA_ARGS__\)", text), unit
        assert '#include "variant_units.h"' in text, unit


def test_variant_units_header_knows_every_unit():
    text = (_paths.csrc_dir() / "variant_units.h").read_text()
    declared = re.findall(r"#ifndef MLA_UNIT_(\w+)\n#define MLA_UNIT_\1\(\.\.\.\)\n#endif", text)
    assert sorted(declared) == sorted(kernel_variants.units())


def test_variants_cover_the_supported_combinations():
    v = set(kernel_variants.variants())
    for rows in (16, 32):
        assert Variant("bf16", "bf16", "bf16", "bf16", rows) in v
        assert Variant("fp16", "fp16", "fp16", "fp16", rows) in v
        for math_ in ("fp16", "e4m3"):
            mma = kernel_variants.mma_for("fp8", math_)
            assert Variant("fp8", "bf16", "bf16", mma, rows) in v
            assert Variant("fp8", "fp16", "fp16", mma, rows) in v
            assert Variant("fp8", "fp8", "bf16", mma, rows) in v  # an fp8 q writes bf16 by default ...
            assert Variant("fp8", "fp8", "fp16", mma, rows) in v  # ... or into a given fp16 out
    assert kernel_variants.rows_choices("bf16") == dispatch.ROWS_PER_CTA_CHOICES == (16, 32)


def test_dispatch_names_are_variant_names():
    assert set(dispatch._DTYPE_NAMES.values()) == set(kernel_variants.ELEM_NAMES.values())
    assert set(kernel_variants.FP8_MATH_MMA.values()) <= set(kernel_variants.ELEM_NAMES.values())


def test_parse_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="cannot read"):
        kernel_variants.parse("MLA_VARIANT(bf16, BF16, BF16)\n")
    with pytest.raises(ValueError, match="unknown element"):
        kernel_variants.parse("MLA_VARIANT(x, BF16, BF16, BF16, INT8, 16)\n")
    with pytest.raises(ValueError, match="lists no MLA_VARIANT"):
        kernel_variants.parse("// nothing\n")
