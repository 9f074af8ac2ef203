"""Grid parsing and subsets of `python -m mla_plugin bench` (no GPU needed)."""

import pytest

from mla_plugin.bench import grid as bench_grid
from mla_plugin.bench.grid import Shape, build_grid, grid_from_options


def test_default_grid_is_the_full_issue_grid():
    shapes = grid_from_options()
    assert len(shapes) == 5 * 4 * 4 * 2
    assert {s.batch for s in shapes} == {1, 8, 32, 64, 128}
    assert {s.heads for s in shapes} == {16, 32, 64, 128}
    assert {s.context for s in shapes} == {1024, 4096, 16384, 32768}
    assert {s.dtype for s in shapes} == {"bf16", "fp8"}
    assert {(s.page_size, s.query_len, s.lengths) for s in shapes} == {(64, 1, "uniform")}
    assert len(set(shapes)) == len(shapes)


def test_options_pick_subsets():
    shapes = grid_from_options(batch="1,64", heads="128", context="4k,32k", dtype="fp8", page_size=32,
                               query_len=2)
    assert [(s.batch, s.heads, s.context, s.dtype) for s in shapes] == [
        (1, 128, 4096, "fp8"), (64, 128, 4096, "fp8"), (1, 128, 32768, "fp8"), (64, 128, 32768, "fp8")]
    assert all(s.page_size == 32 and s.query_len == 2 for s in shapes)


def test_quick_replaces_only_the_defaults():
    quick = grid_from_options(quick=True)
    assert {s.batch for s in quick} == set(bench_grid.QUICK_BATCHES)
    assert {s.heads for s in quick} == set(bench_grid.QUICK_HEADS)
    assert {s.context for s in quick} == set(bench_grid.QUICK_CONTEXTS)
    assert {s.dtype for s in quick} == {"bf16", "fp8"}
    assert len(quick) < len(grid_from_options())
    narrowed = grid_from_options(quick=True, heads="64", dtype="bf16")
    assert {s.heads for s in narrowed} == {64}
    assert {s.dtype for s in narrowed} == {"bf16"}
    assert {s.batch for s in narrowed} == set(bench_grid.QUICK_BATCHES)


def test_grid_runs_each_dtype_together():
    shapes = grid_from_options(batch="1,8", heads="16", context="1k", dtype="fp8,bf16")
    assert [s.dtype for s in shapes] == ["fp8", "fp8", "bf16", "bf16"]


@pytest.mark.parametrize("text,expected", [("1k", 1024), ("32K", 32768), (" 4k", 4096), ("1000", 1000)])
def test_token_counts(text, expected):
    assert bench_grid.parse_token_count(text) == expected


def test_lists_drop_repeats_and_keep_order():
    assert bench_grid.parse_int_list("8, 1,8", "--batch") == [8, 1]
    assert bench_grid.parse_context_list("4k,4096,1k") == [4096, 1024]
    assert bench_grid.parse_dtype_list("fp8,bfloat16,bf16") == ["fp8", "bf16"]


@pytest.mark.parametrize("kwargs,message", [
    ({"batch": "1,x"}, "--batch: 'x' is not an integer"),
    ({"batch": "0"}, "--batch: 0 must be at least 1"),
    ({"heads": "256"}, "--heads: 256 is more than 128"),
    ({"context": "4m"}, "--context: '4m' is not a token count"),
    ({"dtype": "fp16"}, "--dtype: 'fp16' is not a KV cache dtype"),
    ({"page_size": 48}, "--page-size: 48 is not one of 16, 32, 64, 128"),
    ({"query_len": 9}, "--query-len: 9 is outside 1..8"),
    ({"context": "4", "query_len": 8}, "shorter than --query-len 8"),
    ({"lengths": "random"}, "--lengths: 'random' is not one of uniform, ragged"),
])
def test_bad_options_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        grid_from_options(**kwargs)


def test_shape_derived_sizes_and_label():
    shape = Shape(batch=8, heads=128, context=4096 + 1, dtype="fp8", page_size=64, query_len=4)
    assert shape.rows == 32
    assert shape.pages_per_request == 65  # a partial last page still takes a page
    assert shape.label == "B8 H128 4097 fp8 q4"
    assert Shape(1, 16, 32768, "bf16").label == "B1 H16 32k bf16"


def test_build_grid_checks_page_size():
    with pytest.raises(ValueError, match="--page-size"):
        build_grid([1], [16], [1024], ["bf16"], page_size=24)


def test_ragged_grid_marks_every_shape_and_its_label():
    shapes = grid_from_options(batch="8,32", heads="16", context="4k", dtype="bf16", lengths="ragged")
    assert [s.lengths for s in shapes] == ["ragged", "ragged"]
    assert shapes[0].label == "B8 H16 4k bf16 ragged"
    assert Shape(8, 16, 4096, "bf16", query_len=2, lengths="ragged").label == "B8 H16 4k bf16 q2 ragged"
    assert shapes[0].as_dict()["lengths"] == "ragged"
    assert Shape(8, 16, 4096, "bf16") != Shape(8, 16, 4096, "bf16", lengths="ragged")
