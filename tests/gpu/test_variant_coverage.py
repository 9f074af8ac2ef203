"""The GPU suite launched every compiled kernel variant at every page size of
coverage.PAGE_SIZES. tests/gpu/conftest.py moves this test after all others; run alone (or
with a -k that leaves out the variant tests) it fails, listing what was not launched."""

from __future__ import annotations

import pytest

from mla_plugin import dispatch, kernel_variants

from . import coverage

pytestmark = pytest.mark.gpu


def test_every_compiled_variant_ran_at_every_page_size():
    gaps = coverage.missing(kernel_variants.variants(), dispatch.launched_variants(), coverage.launches())
    assert not gaps, "compiled kernel variants the GPU suite did not run:\n" + "\n".join(gaps)
