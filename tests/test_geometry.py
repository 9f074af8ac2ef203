"""The MLA shape facts exist twice, in mla_plugin/geometry.py and csrc/config.cuh (C++ cannot
import Python): these tests read the header and fail when the two disagree."""

from __future__ import annotations

import re

from mla_plugin import _paths, geometry

# config.cuh name -> geometry.py name
SHARED = {
    "V_DIM": "V_DIM",
    "ROPE_DIM": "ROPE_DIM",
    "HEAD_DIM": "HEAD_DIM",
    "MAX_HEADS": "MAX_HEADS",
    "MAX_QUERY_LEN": "MAX_QUERY_LEN",
    "MIN_BLOCK_SIZE": "MIN_BLOCK_SIZE",
    "SMEM_BUDGET_BYTES": "SMEM_BUDGET_BYTES",
    "SM12X_SMEM_PER_SM": "SM12X_SMEM_PER_SM",
    "SMEM_RESERVED_PER_CTA": "SMEM_RESERVED_PER_CTA",
    "MAX_KV_SPLITS": "MAX_KV_SPLITS",
}


def header_constants() -> dict[str, int]:
    """Namespace-level `constexpr int NAME = EXPR;` of config.cuh, each EXPR evaluated with the
    names defined before it (they are sums and products of integers)."""
    text = (_paths.csrc_dir() / "config.cuh").read_text()
    values: dict[str, int] = {}
    for name, expr in re.findall(r"^constexpr int (\w+) = ([^;]+);", text, flags=re.M):
        values[name] = int(eval(expr, {"__builtins__": {}}, dict(values)))  # noqa: S307 (our own header)
    return values


def test_every_shared_fact_is_in_the_header():
    missing = set(SHARED) - set(header_constants())
    assert not missing, f"csrc/config.cuh lacks {sorted(missing)}"


def test_header_and_geometry_agree():
    header = header_constants()
    for cpp, py in SHARED.items():
        assert header[cpp] == getattr(geometry, py), (
            f"csrc/config.cuh {cpp} = {header[cpp]} but mla_plugin/geometry.py {py} = {getattr(geometry, py)}")


def test_block_sizes_span_the_header_range():
    header = header_constants()
    assert geometry.BLOCK_SIZES[0] == header["MIN_BLOCK_SIZE"]
    assert geometry.BLOCK_SIZES[-1] == header["MAX_BLOCK_SIZE"]
    assert all(b % header["MIN_BLOCK_SIZE"] == 0 for b in geometry.BLOCK_SIZES)


def test_derived_facts():
    assert geometry.HEAD_DIM == geometry.LATENT_DIM + geometry.ROPE_DIM
    assert geometry.FLOP_PER_ROW_TOKEN == 2 * (576 + 512)


def test_python_modules_take_the_facts_from_geometry():
    """No module keeps its own copy: the names other modules export are geometry's values."""
    from mla_plugin import build, op_checks, reference, refusals
    from mla_plugin.bench import grid as bench_grid
    from mla_plugin.bench import roofline as bench_roofline

    assert op_checks.HEAD_DIM == reference.HEAD_DIM == refusals.HEAD_SIZE == bench_roofline.KV_DIM == geometry.HEAD_DIM
    assert op_checks.BLOCK_SIZES == refusals.KERNEL_BLOCK_SIZES == bench_grid.PAGE_SIZES == geometry.BLOCK_SIZES
    assert op_checks.MAX_QUERY_LEN == refusals.MAX_QUERY_LEN == bench_grid.MAX_QUERY_LEN == geometry.MAX_QUERY_LEN
    assert build.SMEM_LIMIT_BYTES == geometry.SMEM_BUDGET_BYTES


def test_the_e4m3_q_exponent_is_the_kernels():
    """The e4m3 path's q scaling: the kernel's constant (q_load.cuh) and the reference's."""
    from mla_plugin import reference

    text = (_paths.csrc_dir() / "decode" / "q_load.cuh").read_text()
    m = re.search(r"constexpr int Q_E4M3_EXPONENT = (\d+);", text)
    assert m and int(m.group(1)) == reference.Q_E4M3_EXPONENT
