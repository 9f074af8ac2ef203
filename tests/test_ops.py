"""mla_decode: its CPU reference path, its argument checks and what it hands dispatch."""

from __future__ import annotations


import pytest
import torch

import mla_plugin.ops as ops
from mla_plugin import kernel_variants
from mla_plugin.ops import mla_decode
from tests import fake_cuda
from mla_plugin.reference import mla_decode_reference

FP8 = torch.float8_e4m3fn
T, H, BS, B = 4, 3, 16, 2  # rows, heads, block size, requests (query_len 2)


def _inputs(dtype=torch.bfloat16, cache_dtype=None, query_len=2):
    gen = torch.Generator().manual_seed(0)
    cache_dtype = cache_dtype or dtype
    q = torch.randn(B * query_len, H, 576, generator=gen).to(
        torch.bfloat16 if dtype == FP8 else dtype).to(dtype)
    kv_cache = torch.randn(6, BS, 576, generator=gen).to(
        torch.bfloat16 if cache_dtype in (FP8, torch.uint8) else cache_dtype)
    if cache_dtype in (FP8, torch.uint8):
        kv_cache = kv_cache.to(FP8)
        if cache_dtype == torch.uint8:
            kv_cache = kv_cache.view(torch.uint8)
    block_table = torch.tensor([[4, 1, 0, 0], [2, 5, 3, 0]], dtype=torch.int32)
    seq_lens = torch.tensor([20, 37], dtype=torch.int32)
    return q, kv_cache, block_table, seq_lens


def _call(q, kv_cache, block_table, seq_lens, **kwargs):
    kwargs.setdefault("softmax_scale", 0.1)
    kwargs.setdefault("query_len", 2)
    return mla_decode(q, kv_cache, block_table, seq_lens, **kwargs)


# ---- the CPU path ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
def test_cpu_path_is_the_reference(dtype, causal):
    q, kv_cache, block_table, seq_lens = _inputs(dtype)
    out, lse = _call(q, kv_cache, block_table, seq_lens, causal=causal, return_lse=True,
                     max_seq_len=37)
    ref_out, ref_lse = mla_decode_reference(q, kv_cache, block_table, seq_lens,
                                            softmax_scale=0.1, query_len=2, causal=causal)
    assert out.dtype == dtype and out.shape == (T, H, 512)
    assert torch.equal(out, ref_out.to(dtype)) and torch.equal(lse, ref_lse)


def test_cpu_path_writes_given_outputs():
    q, kv_cache, block_table, seq_lens = _inputs()
    out = torch.full((T, H, 512), float("nan"), dtype=torch.bfloat16)
    lse = torch.full((T, H), float("nan"))
    returned = _call(q, kv_cache, block_table, seq_lens, out=out, lse=lse)
    assert returned is out
    assert torch.isfinite(out.float()).all() and torch.isfinite(lse).all()


@pytest.mark.parametrize("cache_dtype", [FP8, torch.uint8])
def test_cpu_path_fp8_cache(cache_dtype):
    q, kv_cache, block_table, seq_lens = _inputs(torch.bfloat16, cache_dtype)
    out, lse = _call(q, kv_cache, block_table, seq_lens, kv_scale=0.5, return_lse=True)
    fp8_cache = kv_cache.view(FP8)
    ref_out, ref_lse = mla_decode_reference(q, fp8_cache, block_table, seq_lens,
                                            softmax_scale=0.1, kv_scale=0.5, query_len=2)
    assert torch.equal(out, ref_out.to(torch.bfloat16)) and torch.equal(lse, ref_lse)


def test_cpu_path_fp8_query_writes_bf16_or_given_fp16():
    q, kv_cache, block_table, seq_lens = _inputs(FP8, FP8)
    out = _call(q, kv_cache, block_table, seq_lens, q_scale=torch.tensor(0.5),
                kv_scale=torch.tensor(2.0))
    assert out.dtype == torch.bfloat16
    out16 = torch.empty(T, H, 512, dtype=torch.float16)
    _call(q, kv_cache, block_table, seq_lens, q_scale=0.5, kv_scale=2.0, out=out16)
    ref, _ = mla_decode_reference(q, kv_cache, block_table, seq_lens, softmax_scale=0.1,
                                  q_scale=0.5, kv_scale=2.0, query_len=2)
    assert torch.equal(out, ref.to(torch.bfloat16)) and torch.equal(out16, ref.half())


def test_cpu_path_takes_a_misaligned_query():
    # (the copy the CUDA path makes: test_launch_gets_an_aligned_copy_of_a_misaligned_query,
    # and on the GPU tests/gpu/test_decode_contract.py::test_misaligned_q_is_copied_and_still_right)
    q, kv_cache, block_table, seq_lens = _inputs()
    storage = torch.empty(q.numel() + 1, dtype=q.dtype)
    odd = storage[1:].view(q.shape)  # data_ptr 2 bytes past an aligned address
    odd.copy_(q)
    assert odd.data_ptr() % 16
    assert torch.equal(_call(odd, kv_cache, block_table, seq_lens), _call(q, kv_cache,
                                                                          block_table,
                                                                          seq_lens))


def test_empty_batch():
    q, kv_cache, _, _ = _inputs()
    out, lse = mla_decode(q[:0], kv_cache, torch.zeros(0, 4, dtype=torch.int32),
                          torch.zeros(0, dtype=torch.int32), softmax_scale=0.1,
                          return_lse=True)
    assert out.shape == (0, H, 512) and lse.shape == (0, H)


# ---- what the CUDA path hands dispatch.launch -----------------------------------------
# mla_decode is called through its public signature with fake-CUDA tensors (tests/fake_cuda.py:
# CPU tensors whose .device says cuda:0, since CPU-only torch cannot make CUDA tensors), so
# its real argument checks and CUDA branch run; what they hand on is recorded.

@pytest.fixture
def recorded_launch(monkeypatch):
    """dispatch.launch records its call instead of launching."""
    calls = []
    monkeypatch.setattr(ops.dispatch, "launch", lambda *a, **k: calls.append((a, k)))
    return calls


def _launch_through_cuda_branch(q, kv_cache, block_table, seq_lens, **kwargs):
    kwargs.setdefault("softmax_scale", 0.1)
    kwargs.setdefault("query_len", 2)
    q0 = q[0] if isinstance(q, (tuple, list)) else q
    dtype = torch.bfloat16 if q0.dtype == FP8 else q0.dtype
    out = torch.full((q0.shape[0], q0.shape[1], 512), float("nan"), dtype=dtype)
    lse = torch.full(q0.shape[:2], float("nan"))
    fake_cuda.call_as_cuda(mla_decode, q, kv_cache, block_table, seq_lens, out=out, lse=lse, **kwargs)
    return out, lse


def test_launch_gets_split_query_and_everything_else(recorded_launch):
    q, kv_cache, block_table, seq_lens = _inputs()
    out, lse = _launch_through_cuda_branch(q, kv_cache, block_table, seq_lens,
                                           causal=False, max_seq_len=40)
    (args, kwargs), = recorded_launch
    q_nope, q_pe, cache, table, lens, got_out, got_lse = args
    assert all(t.device.type == "cuda" for t in args)  # the CUDA branch, not the reference
    assert q_nope.data_ptr() == q.data_ptr() and q_nope.shape == (T, H, 512)
    assert q_pe.data_ptr() == q.data_ptr() + 512 * 2 and q_pe.shape == (T, H, 64)
    assert cache.data_ptr() == kv_cache.data_ptr() and table.data_ptr() == block_table.data_ptr()
    assert lens.data_ptr() == seq_lens.data_ptr()
    assert got_out.data_ptr() == out.data_ptr() and got_lse.data_ptr() == lse.data_ptr()
    assert kwargs == dict(softmax_scale=0.1, kv_scale=None, q_scale=None, query_len=2,
                          causal=False, max_seq_len=40, fp8_math=None)


def test_launch_gets_uint8_cache_as_fp8_and_scales(recorded_launch):
    q, kv_cache, block_table, seq_lens = _inputs(torch.bfloat16, torch.uint8)
    kv_scale = torch.tensor([0.5])
    _launch_through_cuda_branch(q, kv_cache, block_table, seq_lens, kv_scale=kv_scale, fp8_math="e4m3")
    (args, kwargs), = recorded_launch
    assert args[2].dtype == FP8 and args[2].data_ptr() == kv_cache.data_ptr()
    assert kwargs["kv_scale"].data_ptr() == kv_scale.data_ptr() and kwargs["fp8_math"] == "e4m3"


def test_launch_gets_one_fp8_tensor_for_an_fp8_pair(recorded_launch):
    q, kv_cache, block_table, seq_lens = _inputs(FP8, FP8)
    pair = (q[..., :512].clone(), q[..., 512:].clone())  # two separate allocations
    _launch_through_cuda_branch(pair, kv_cache, block_table, seq_lens, q_scale=0.5)
    (args, kwargs), = recorded_launch
    q_nope, q_pe = args[0], args[1]
    assert q_pe.data_ptr() == q_nope.data_ptr() + 512 and q_pe.stride() == q_nope.stride()
    assert torch.equal(torch.cat((q_nope, q_pe), -1).view(torch.uint8), q.view(torch.uint8))
    assert kwargs["q_scale"] == 0.5


def test_launch_gets_aligned_copies_of_a_misaligned_pair(recorded_launch):
    q, kv_cache, block_table, seq_lens = _inputs()
    storage = torch.empty(T * H * 513 + 1, dtype=q.dtype)
    q_nope = storage[1:T * H * 512 + 1].view(T, H, 512)
    q_nope.copy_(q[..., :512])
    q_pe = q[..., 512:]  # aligned already: passed as it is
    _launch_through_cuda_branch((q_nope, q_pe), kv_cache, block_table, seq_lens)
    (args, _), = recorded_launch
    assert q_nope.data_ptr() % 16 and args[0].data_ptr() % 16 == 0
    assert torch.equal(fake_cuda.real(args[0]), q_nope)
    assert args[1].data_ptr() == q_pe.data_ptr()


def test_launch_gets_an_aligned_copy_of_a_misaligned_query(recorded_launch):
    q, kv_cache, block_table, seq_lens = _inputs()
    odd = _misaligned(q)
    _launch_through_cuda_branch(odd, kv_cache, block_table, seq_lens)
    (args, _), = recorded_launch
    assert args[0].data_ptr() % 16 == 0 and args[1].data_ptr() % 16 == 0
    assert torch.equal(torch.cat([fake_cuda.real(args[0]), fake_cuda.real(args[1])], -1), q)


# ---- the CUDA branch down to the compiled extension (faked): failures surface --------------

@pytest.fixture
def no_reference(monkeypatch):
    """Any use of the fp32 reference fails the test: the CUDA branch must not fall back to it."""
    import mla_plugin.reference as reference

    def refuse(*args, **kwargs):
        raise AssertionError("the CUDA branch fell back to the reference")

    for module, name in ((ops, "mla_decode_reference"), (reference, "mla_decode_reference"),
                         (reference, "_reference"), (ops, "_decode_with_reference")):
        monkeypatch.setattr(module, name, refuse)


def test_a_kernel_launch_failure_surfaces_from_mla_decode(monkeypatch, no_reference):
    def illegal_access(*args):
        raise RuntimeError("mla_plugin: decode launch failed: an illegal memory access was encountered")

    q, kv_cache, block_table, seq_lens = _inputs()
    with fake_cuda.installed(monkeypatch, fake_cuda.FakeExtension(illegal_access)) as ext:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            out, _ = _launch_through_cuda_branch(q, kv_cache, block_table, seq_lens)
    assert len(ext.calls) == 1  # launched once, not retried
    out = fake_cuda.named(ext.calls[0])["out"]
    assert torch.isnan(fake_cuda.real(out).float()).all()  # and nothing wrote a result


def test_the_cuda_branch_hands_the_extension_a_compiled_variant(monkeypatch, no_reference):
    q, kv_cache, block_table, seq_lens = _inputs(torch.bfloat16, FP8)
    with fake_cuda.installed(monkeypatch, fake_cuda.FakeExtension()) as ext:
        out, lse = _launch_through_cuda_branch(q, kv_cache, block_table, seq_lens, kv_scale=0.5,
                                               max_seq_len=37)
    call = fake_cuda.named(ext.calls[0])
    assert len(ext.calls) == 1 and call["out"].data_ptr() == out.data_ptr()
    assert call["lse"].data_ptr() == lse.data_ptr() and call["kv_scale_v"] == 0.5
    assert kernel_variants.find("fp8", "bf16", "bf16", call["mma"], call["rows"]) is not None
    assert call["mma"] == "fp16" and call["num_splits"] >= 1 and call["query_len"] == 2


def test_without_cuda_mla_decode_raises_and_nothing_falls_back(monkeypatch, no_reference):
    from mla_plugin import build

    monkeypatch.setattr(build, "_loaded", None)
    monkeypatch.setattr(ops.torch.cuda, "is_available", lambda: False)
    q, kv_cache, block_table, seq_lens = _inputs()
    with pytest.raises(RuntimeError, match="mla_plugin: CUDA is not available"):
        _launch_through_cuda_branch(q, kv_cache, block_table, seq_lens)


# ---- every bad argument names itself and what it should be ---------------------------

def _misaligned(t: torch.Tensor) -> torch.Tensor:
    storage = torch.empty(t.numel() + 8, dtype=t.dtype)
    view = storage[1:t.numel() + 1].view(t.shape)
    return view.copy_(t)


def _padded_stride_cache(extra):
    kv = torch.randn(6 * (BS * 576 + extra)).to(torch.bfloat16)
    return kv.as_strided((6, BS, 576), (BS * 576 + extra, 576, 1))


def _bad(change):
    """change(q, kv_cache, block_table, seq_lens, kwargs) edits one thing in place."""
    def make():
        q, kv_cache, block_table, seq_lens = _inputs()
        inputs = dict(q=q, kv_cache=kv_cache, block_table=block_table, seq_lens=seq_lens)
        kwargs = dict(softmax_scale=0.1, query_len=2)
        change(inputs, kwargs)
        return inputs, kwargs
    return make


BAD_INPUTS = {
    # q
    "q float32": (_bad(lambda i, k: i.update(q=i["q"].float())), "q.dtype",
                  "torch.bfloat16, torch.float16 or torch.float8_e4m3fn"),
    "q last dim 512": (_bad(lambda i, k: i.update(q=i["q"][..., :512])), "q.shape",
                       "[T, H, 576]"),
    "q 2-D": (_bad(lambda i, k: i.update(q=i["q"][:, 0])), "q.shape", "[T, H, 576]"),
    "q 129 heads": (_bad(lambda i, k: i.update(q=torch.zeros(T, 129, 576,
                                                             dtype=torch.bfloat16))),
                    "q.shape[1] (heads)", "in 1..128"),
    "q strided last dim": (_bad(lambda i, k: i.update(
        q=torch.zeros(T, H, 1152, dtype=torch.bfloat16)[..., ::2])), "q.stride(2)", "1"),
    "q list of 3": (_bad(lambda i, k: i.update(q=[i["q"]] * 3)), "q",
                    "(q_nope [T, H, 512], q_pe [T, H, 64]) pair"),
    "q a number": (_bad(lambda i, k: i.update(q=1.0)), "q", "a tensor [T, H, 576]"),
    "q_pe dtype": (_bad(lambda i, k: i.update(q=(i["q"][..., :512],
                                                 i["q"][..., 512:].half()))),
                   "q_pe.dtype", "q_nope's dtype torch.bfloat16"),
    "q_pe heads": (_bad(lambda i, k: i.update(q=(i["q"][..., :512],
                                                 i["q"][:, :2, 512:]))),
                   "q_pe.shape", "[4, 3, 64]"),
    "q_nope width": (_bad(lambda i, k: i.update(q=(i["q"][..., :500],
                                                   i["q"][..., 512:]))),
                     "q_nope.shape", "[T, H, 512]"),
    "rows not B x query_len": (_bad(lambda i, k: k.update(query_len=1)), "q",
                               "2 rows (batch 2 x query_len 1"),
    # kv_cache
    "cache float32": (_bad(lambda i, k: i.update(kv_cache=i["kv_cache"].float())),
                      "kv_cache.dtype", "torch.float8_e4m3fn or torch.uint8"),
    "cache width": (_bad(lambda i, k: i.update(kv_cache=i["kv_cache"][..., :512])),
                    "kv_cache.shape", "[num_blocks, block_size, 576]"),
    "block size 8": (_bad(lambda i, k: i.update(kv_cache=i["kv_cache"][:, :8])),
                     "kv_cache.shape[1] (block_size)", "one of 16, 32, 64, 128"),
    "cache padded tokens": (_bad(lambda i, k: i.update(
        kv_cache=torch.zeros(6, BS, 640, dtype=torch.bfloat16)[..., :576])),
        "kv_cache.stride(1)", "576"),
    "cache channels strided": (_bad(lambda i, k: i.update(
        kv_cache=torch.zeros(6, BS, 1152, dtype=torch.bfloat16)[..., ::2])),
        "kv_cache.stride(2)", "1 (channels contiguous)"),
    "cache blocks overlap": (_bad(lambda i, k: i.update(
        kv_cache=i["kv_cache"].as_strided((6, BS, 576), (576, 576, 1)))),
        "kv_cache.stride(0)", ">= block_size * 576 = 9216"),
    "cache misaligned": (_bad(lambda i, k: i.update(kv_cache=_misaligned(i["kv_cache"]))),
                         "kv_cache.data_ptr()", "a multiple of 16 bytes"),
    "cache stride(0) odd": (_bad(lambda i, k: i.update(kv_cache=_padded_stride_cache(1))),
                            "kv_cache.stride(0) * element_size", "a multiple of 16 bytes"),
    "cache bf16, q fp16": (_bad(lambda i, k: i.update(q=i["q"].half())), "q.dtype",
                           "torch.bfloat16 (a 16-bit kv_cache needs q of the same dtype)"),
    "cache bf16, q fp8": (_bad(lambda i, k: i.update(q=i["q"].to(FP8))), "q.dtype",
                          "torch.bfloat16 (a 16-bit kv_cache needs q of the same dtype)"),
    # block_table, seq_lens
    "table int64": (_bad(lambda i, k: i.update(block_table=i["block_table"].long())),
                    "block_table.dtype", "torch.int32"),
    "table 1-D": (_bad(lambda i, k: i.update(block_table=i["block_table"][0])),
                  "block_table.shape", "[B, max_blocks]"),
    "table strided rows": (_bad(lambda i, k: i.update(
        block_table=torch.zeros(2, 8, dtype=torch.int32)[:, ::2])),
        "block_table.stride(1)", "1 (rows contiguous)"),
    "table a list": (_bad(lambda i, k: i.update(block_table=[[0]])), "block_table",
                     "an int32 tensor [B, max_blocks]"),
    "lens int64": (_bad(lambda i, k: i.update(seq_lens=i["seq_lens"].long())),
                   "seq_lens.dtype", "torch.int32"),
    "lens wrong batch": (_bad(lambda i, k: i.update(seq_lens=i["seq_lens"][:1])),
                         "seq_lens.shape", "[2] (block_table.shape[0])"),
    "lens strided": (_bad(lambda i, k: i.update(
        seq_lens=torch.tensor([20, 0, 37, 0], dtype=torch.int32)[::2])),
        "seq_lens", "contiguous"),
    # flags and scalars
    "query_len 0": (_bad(lambda i, k: k.update(query_len=0)), "query_len", "1..8"),
    "query_len 9": (_bad(lambda i, k: k.update(query_len=9)), "query_len", "1..8"),
    "query_len True": (_bad(lambda i, k: k.update(query_len=True)), "query_len", "an int"),
    "causal string": (_bad(lambda i, k: k.update(causal="yes")), "causal", "a bool"),
    "return_lse int": (_bad(lambda i, k: k.update(return_lse=1)), "return_lse", "a bool"),
    "max_seq_len negative": (_bad(lambda i, k: k.update(max_seq_len=-1)), "max_seq_len",
                             "None or an int >= 0"),
    "scale zero": (_bad(lambda i, k: k.update(softmax_scale=0.0)), "softmax_scale",
                   "a positive finite float"),
    "scale negative": (_bad(lambda i, k: k.update(softmax_scale=-0.1)), "softmax_scale",
                       "a positive finite float"),
    "scale nan": (_bad(lambda i, k: k.update(softmax_scale=float("nan"))), "softmax_scale",
                  "a positive finite float"),
    "scale inf": (_bad(lambda i, k: k.update(softmax_scale=float("inf"))), "softmax_scale",
                  "a positive finite float"),
    "scale tensor": (_bad(lambda i, k: k.update(softmax_scale=torch.tensor(0.1))),
                     "softmax_scale", "a positive finite float"),
    "kv_scale on bf16 cache": (_bad(lambda i, k: k.update(kv_scale=1.0)), "kv_scale",
                               "None (a dequantisation scale only applies to a "
                               "float8_e4m3fn (or uint8) kv_cache)"),
    "q_scale on bf16 q": (_bad(lambda i, k: k.update(q_scale=1.0)), "q_scale",
                          "None (a dequantisation scale only applies to a float8_e4m3fn q)"),
    # out, lse
    "out dtype": (_bad(lambda i, k: k.update(out=torch.empty(T, H, 512))), "out.dtype",
                  "torch.bfloat16 (q's dtype)"),
    "out shape": (_bad(lambda i, k: k.update(out=torch.empty(T, H, 576,
                                                             dtype=torch.bfloat16))),
                  "out.shape", "[4, 3, 512] (q's T and H)"),
    "out strided": (_bad(lambda i, k: k.update(
        out=torch.empty(T, H, 1024, dtype=torch.bfloat16)[..., ::2])), "out.stride(2)",
        "1 (last dim contiguous)"),
    "out misaligned": (_bad(lambda i, k: k.update(
        out=_misaligned(torch.empty(T, H, 512, dtype=torch.bfloat16)))), "out",
        "16-byte aligned"),
    "lse dtype": (_bad(lambda i, k: k.update(lse=torch.empty(T, H, dtype=torch.bfloat16))),
                  "lse.dtype", "torch.float32"),
    "lse shape": (_bad(lambda i, k: k.update(lse=torch.empty(T, H, 1))), "lse.shape",
                  "[4, 3] (q's T and H)"),
    "lse strided": (_bad(lambda i, k: k.update(lse=torch.empty(H, T).t())), "lse",
                    "contiguous"),
    # devices (the meta device stands in for "not this device" on a CPU-only machine)
    "q on meta": (_bad(lambda i, k: i.update(q=i["q"].to("meta"),
                                             kv_cache=i["kv_cache"].to("meta"),
                                             block_table=i["block_table"].to("meta"),
                                             seq_lens=i["seq_lens"].to("meta"))),
                  "q.device", "a CUDA device or the CPU"),
    "lens elsewhere": (_bad(lambda i, k: i.update(seq_lens=i["seq_lens"].to("meta"))),
                       "seq_lens.device", "cpu (all tensors on q's device)"),
    # value checks (always on CPU tensors)
    "seq_len past the table": (_bad(lambda i, k: i["seq_lens"].copy_(
        torch.tensor([20, 65], dtype=torch.int32))), "seq_lens[1]",
        "in 0..64 (block_table.shape[1] 4 x block_size 16)"),
    "seq_len negative": (_bad(lambda i, k: i["seq_lens"].copy_(
        torch.tensor([-1, 5], dtype=torch.int32))), "seq_lens[0]", "in 0..64"),
    "seq_len under query_len": (_bad(lambda i, k: i["seq_lens"].copy_(
        torch.tensor([1, 5], dtype=torch.int32))), "seq_lens[0]", "0 or >= query_len 2"),
    "table entry out of the cache": (_bad(lambda i, k: i["block_table"][1].copy_(
        torch.tensor([2, 6, 3, 0], dtype=torch.int32))), "block_table[1, 1]",
        "a block index in 0..5"),
    "table entry negative": (_bad(lambda i, k: i["block_table"][0].copy_(
        torch.tensor([-3, 1, 0, 0], dtype=torch.int32))), "block_table[0, 0]",
        "a block index in 0..5"),
    "max_seq_len too small": (_bad(lambda i, k: k.update(max_seq_len=36)), "max_seq_len",
                              ">= max(seq_lens) = 37"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_names_argument_and_expected_value(case):
    make, argument, expected = BAD_INPUTS[case]
    inputs, kwargs = make()
    with pytest.raises(ValueError) as info:
        mla_decode(**inputs, **kwargs)
    message = str(info.value)
    assert message.startswith(f"mla_decode: {argument} must be "), message
    assert expected in message, message


FP8_BAD_INPUTS = {
    "kv_scale fp16 tensor": (dict(kv_scale=torch.tensor(1.0, dtype=torch.float16)),
                             "kv_scale", "a 1-element torch.float32 tensor"),
    "kv_scale two elements": (dict(kv_scale=torch.ones(2)), "kv_scale",
                              "a 1-element torch.float32 tensor"),
    "kv_scale negative": (dict(kv_scale=-1.0), "kv_scale", "a positive finite float"),
    "q_scale elsewhere": (dict(q_scale=torch.tensor(1.0, device="meta")), "q_scale.device",
                          "cpu"),
    "out fp32 for fp8 q": (dict(out=torch.empty(T, H, 512)), "out.dtype",
                           "torch.bfloat16 or torch.float16 (q is fp8)"),
}


@pytest.mark.parametrize("case", FP8_BAD_INPUTS, ids=list(FP8_BAD_INPUTS))
def test_bad_fp8_input_names_argument_and_expected_value(case):
    change, argument, expected = FP8_BAD_INPUTS[case]
    q, kv_cache, block_table, seq_lens = _inputs(FP8, FP8)
    kwargs = dict(softmax_scale=0.1, query_len=2, q_scale=1.0, kv_scale=1.0)
    kwargs.update(change)
    with pytest.raises(ValueError) as info:
        mla_decode(q, kv_cache, block_table, seq_lens, **kwargs)
    message = str(info.value)
    assert message.startswith(f"mla_decode: {argument} must be "), message
    assert expected in message, message


def test_numpy_scalars_are_accepted_and_passed_as_python_numbers(recorded_launch):
    import numpy as np  # installed with vLLM (the test extra)

    q, kv_cache, block_table, seq_lens = _inputs(torch.bfloat16, FP8)
    _launch_through_cuda_branch(q, kv_cache, block_table, seq_lens,
                                softmax_scale=np.float32(0.1), kv_scale=np.float64(0.5),
                                query_len=np.int64(2), max_seq_len=np.int64(40))
    (_, kwargs), = recorded_launch
    assert type(kwargs["softmax_scale"]) is float and type(kwargs["kv_scale"]) is float
    assert type(kwargs["query_len"]) is int and type(kwargs["max_seq_len"]) is int
    assert kwargs["kv_scale"] == 0.5 and kwargs["max_seq_len"] == 40


def test_fp8_math_refused_for_a_16bit_cache():
    q, kv_cache, block_table, seq_lens = _inputs()
    with pytest.raises(ValueError, match=r"fp8_math applies to a float8_e4m3fn .* got fp8_math='e4m3' with a torch.bfloat16 cache"):
        mla_decode(q, kv_cache, block_table, seq_lens, softmax_scale=0.1, query_len=2, fp8_math="e4m3")


def test_fp8_math_unknown_value_named(monkeypatch):
    q, kv_cache, block_table, seq_lens = _inputs()
    fp8 = kv_cache.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"mla_decode: fp8_math: expected one of \('fp16', 'e4m3'\), got 'int8'"):
        mla_decode(q, fp8, block_table, seq_lens, softmax_scale=0.1, query_len=2, fp8_math="int8")
    monkeypatch.setenv("MLA_PLUGIN_FP8_MATH", "int8")
    with pytest.raises(ValueError, match="MLA_PLUGIN_FP8_MATH: expected one of"):
        mla_decode(q, fp8, block_table, seq_lens, softmax_scale=0.1, query_len=2)
