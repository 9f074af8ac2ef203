"""The bench's input tensors, made on the CPU (the same code makes them on the GPU)."""

import random

import torch

from mla_plugin.bench import inputs as bench_inputs
from mla_plugin.bench.grid import Shape


def test_shapes_dtypes_and_scales():
    shape = Shape(batch=3, heads=20, context=100, dtype="bf16", page_size=16, query_len=2)
    inp = bench_inputs.make_inputs(shape, "cpu", seed=1)
    assert inp.q.shape == (6, 20, 576) and inp.q.dtype == torch.bfloat16
    assert inp.kv_cache.shape == (3 * 7, 16, 576) and inp.kv_cache.dtype == torch.bfloat16
    assert inp.block_table.shape == (3, 7) and inp.block_table.dtype == torch.int32
    assert inp.seq_lens.tolist() == [100, 100, 100] and inp.seq_lens.dtype == torch.int32
    assert inp.kv_scale is None and inp.kv_scale_value == 1.0
    assert abs(inp.softmax_scale - 192 ** -0.5) < 1e-12


def test_block_table_is_a_scattered_permutation_of_all_pages():
    shape = Shape(batch=8, heads=16, context=1024, dtype="bf16", page_size=16)
    table = bench_inputs.make_inputs(shape, "cpu").block_table
    assert sorted(table.flatten().tolist()) == list(range(8 * 64))
    steps = (table[:, 1:] - table[:, :-1]).flatten()
    assert (steps == 1).float().mean() < 0.1  # pages of a request are not laid out one after another


def test_values_are_normal_and_not_zero():
    shape = Shape(batch=2, heads=16, context=256, dtype="bf16", page_size=64)
    inp = bench_inputs.make_inputs(shape, "cpu")
    kv = inp.kv_cache.float()
    assert (kv == 0).float().mean() < 1e-3
    assert 0.9 < kv.std() < 1.1 and abs(kv.mean()) < 0.05
    assert 0.9 < inp.q.float().std() < 1.1


def test_fp8_cache_holds_values_over_kv_scale():
    shape = Shape(batch=2, heads=16, context=256, dtype="fp8", page_size=64)
    inp = bench_inputs.make_inputs(shape, "cpu")
    assert inp.kv_cache.dtype == torch.float8_e4m3fn
    assert inp.kv_scale.dtype == torch.float32 and inp.kv_scale.shape == (1,)
    assert abs(inp.kv_scale_value - bench_inputs.FP8_KV_SCALE) < 1e-7
    stored = inp.kv_cache.float()
    assert 15 < stored.std() < 25  # N(0,1) / 0.05
    assert stored.abs().max() < 448  # inside e4m3's range: nothing saturates
    dequant = stored * inp.kv_scale_value
    assert 0.9 < dequant.std() < 1.1


def test_seed_decides_the_data():
    shape = Shape(batch=1, heads=16, context=64, dtype="bf16", page_size=16)
    a = bench_inputs.make_inputs(shape, "cpu", seed=3)
    b = bench_inputs.make_inputs(shape, "cpu", seed=3)
    c = bench_inputs.make_inputs(shape, "cpu", seed=4)
    assert torch.equal(a.kv_cache, b.kv_cache) and torch.equal(a.q, b.q)
    assert not torch.equal(a.kv_cache, c.kv_cache)


def test_large_caches_are_filled_in_chunks(monkeypatch):
    monkeypatch.setattr(bench_inputs, "_CHUNK_ELEMENTS", 16 * 576 * 3)  # 3 pages per chunk
    shape = Shape(batch=2, heads=16, context=16 * 5, dtype="bf16", page_size=16)
    kv = bench_inputs.make_inputs(shape, "cpu").kv_cache.float()
    per_page_std = kv.reshape(10, -1).std(dim=1)
    assert (per_page_std > 0.8).all()  # every page filled, the last partial chunk too


def test_input_bytes_counts_the_cache():
    bf16 = Shape(batch=4, heads=16, context=1000, dtype="bf16", page_size=64)
    fp8 = Shape(batch=4, heads=16, context=1000, dtype="fp8", page_size=64)
    cache_bf16 = 4 * 16 * 64 * 576 * 2  # 16 pages of 64 per request
    assert bench_inputs.input_bytes(bf16) - bench_inputs.input_bytes(fp8) == cache_bf16 // 2
    assert bench_inputs.input_bytes(bf16) > cache_bf16


def test_uniform_lengths_are_the_full_context():
    shape = Shape(batch=3, heads=16, context=100, dtype="bf16", page_size=16)
    assert bench_inputs.request_lengths(shape, seed=5) == [100, 100, 100]
    inp = bench_inputs.make_inputs(shape, "cpu")
    assert inp.lengths == [100, 100, 100] and inp.max_seq_len == 100


def test_ragged_lengths_are_seeded_draws_in_query_len_to_context():
    shape = Shape(batch=64, heads=16, context=300, dtype="bf16", page_size=16, lengths="ragged")
    lengths = bench_inputs.request_lengths(shape, seed=7)
    assert len(lengths) == 64 and all(1 <= n <= 300 for n in lengths)
    assert len(set(lengths)) > 32  # drawn, not one value
    assert lengths == bench_inputs.request_lengths(shape, seed=7)  # the seed decides them
    assert lengths != bench_inputs.request_lengths(shape, seed=8)
    rng = random.Random(7)
    assert lengths[:2] == [rng.randint(1, 300), rng.randint(1, 300)]  # random.Random(seed), uniform
    # a batch's first lengths do not depend on its size (B8 is B32's first eight)
    assert bench_inputs.request_lengths(Shape(8, 16, 300, "bf16", 16, lengths="ragged"), 7) == lengths[:8]


def test_ragged_lengths_cover_the_range_roughly_uniformly():
    shape = Shape(batch=4000, heads=16, context=1000, dtype="bf16", lengths="ragged")
    lengths = bench_inputs.request_lengths(shape, seed=0)
    assert min(lengths) < 20 and max(lengths) > 980
    assert abs(sum(lengths) / len(lengths) - 500.5) < 20


def test_ragged_multi_token_requests_hold_their_query_tokens():
    shape = Shape(batch=500, heads=16, context=12, dtype="bf16", page_size=16, query_len=8, lengths="ragged")
    lengths = bench_inputs.request_lengths(shape, seed=1)
    assert min(lengths) == 8 and max(lengths) == 12  # causal rows need seq_len >= query_len


def test_ragged_inputs_carry_the_drawn_lengths_and_the_same_tensors_otherwise():
    uniform = Shape(batch=4, heads=16, context=200, dtype="fp8", page_size=16)
    ragged = Shape(batch=4, heads=16, context=200, dtype="fp8", page_size=16, lengths="ragged")
    a = bench_inputs.make_inputs(uniform, "cpu", seed=2)
    b = bench_inputs.make_inputs(ragged, "cpu", seed=2)
    assert b.seq_lens.tolist() == b.lengths == bench_inputs.request_lengths(ragged, seed=2)
    assert b.seq_lens.dtype == torch.int32 and b.max_seq_len == max(b.lengths)
    assert torch.equal(a.q, b.q) and torch.equal(a.kv_cache.view(torch.uint8), b.kv_cache.view(torch.uint8))
    assert torch.equal(a.block_table, b.block_table)  # every request keeps the pages of the full context
