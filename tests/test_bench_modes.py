"""Capture conditions of the bench (--mode, --max-model-len): parsing and the planning hints."""

import pytest

from mla_plugin.bench import modes as bench_modes


@pytest.mark.parametrize("text,expected", [
    ("both", ("eager", "graph")),
    ("eager", ("eager",)),
    ("graph", ("graph",)),
    (" Graph ", ("graph",)),
])
def test_parse_modes(text, expected):
    assert bench_modes.parse_modes(text) == expected


def test_default_is_both_and_max_model_len_is_vllms_for_deepseek():
    assert bench_modes.parse_modes(bench_modes.DEFAULT_MODE) == ("eager", "graph")
    assert bench_modes.DEFAULT_MAX_MODEL_LEN == 131072


@pytest.mark.parametrize("text", ["", "cuda-graph", "eager,graph"])
def test_bad_mode_is_refused_by_name(text):
    with pytest.raises(ValueError, match="--mode: .* is not one of eager, graph, both"):
        bench_modes.parse_modes(text)


def test_eager_plans_from_the_batch_own_longest_request():
    assert bench_modes.planning_max_seq_len("eager", [4096, 4096], 131072) == 4096
    assert bench_modes.planning_max_seq_len("eager", [17, 3000, 5], 131072) == 3000  # ragged: their max


def test_graph_plans_from_max_model_len_whatever_the_lengths():
    assert bench_modes.planning_max_seq_len("graph", [4096, 4096], 131072) == 131072
    assert bench_modes.planning_max_seq_len("graph", [17, 3000, 5], 65536) == 65536


def test_unknown_mode_has_no_hint():
    with pytest.raises(ValueError, match="unknown mode 'both'"):
        bench_modes.planning_max_seq_len("both", [1], 131072)


def test_max_model_len_must_hold_every_request_in_graph_mode():
    assert bench_modes.check_max_model_len(131072, 32768, ("eager", "graph")) == 131072
    assert bench_modes.check_max_model_len(32768, 32768, ("graph",)) == 32768
    assert bench_modes.check_max_model_len(1024, 32768, ("eager",)) == 1024  # eager never uses it
    with pytest.raises(ValueError, match="--max-model-len: 16384 is shorter than the longest --context"):
        bench_modes.check_max_model_len(16384, 32768, ("eager", "graph"))
    with pytest.raises(ValueError, match="--max-model-len: 0 must be at least 1"):
        bench_modes.check_max_model_len(0, 1024, ("eager",))


def test_descriptions_name_the_hint():
    assert "max(seq_lens)" in bench_modes.describe("eager", 131072)
    text = bench_modes.describe("graph", 131072)
    assert "131072" in text and "CUDA graph" in text and "real lengths" in text
