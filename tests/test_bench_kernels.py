"""How the bench loads and calls the contenders, checked on the CPU with fakes."""

import ast
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_fakes sits beside the tests
import bench_fakes  # noqa: E402
from mla_plugin.bench import kernels as bench_kernels  # noqa: E402
from mla_plugin.bench.grid import Shape  # noqa: E402
from mla_plugin.bench.inputs import make_inputs  # noqa: E402


@pytest.mark.parametrize("max_seq_len,sm_count,expected", [
    (100, 132, 1),        # under 512 tokens: one split
    (1024, 132, 2),
    (1500, 132, 2),       # 1500 // 512 = 2, a power of two already
    (2048, 132, 4),
    (3000, 132, 8),       # 3000 // 512 = 5 -> 8
    (32768, 132, 64),
    (1 << 20, 132, 264),  # capped at 2 per SM
    (32768, 20, 40),
])
def test_num_kv_splits_follows_vllm(max_seq_len, sm_count, expected):
    assert bench_kernels.num_kv_splits(max_seq_len, sm_count) == expected


def test_triton_is_called_as_forward_mqa_calls_it():
    calls = []
    shape = Shape(batch=2, heads=16, context=1500, dtype="fp8", page_size=64)
    inputs = make_inputs(shape, "cpu")
    prepared = bench_kernels.prepare_triton(bench_fakes.make_triton(calls=calls), inputs, sm_count=132)
    prepared.run()
    (c,) = calls
    assert c["q"] is inputs.q and c["q"].shape == (2, 16, 576)
    assert c["k_buffer"].shape == (2 * 24, 64, 1, 576)  # unsqueezed to one KV head
    assert c["k_buffer"].data_ptr() == inputs.kv_cache.data_ptr()
    assert c["v_buffer"].shape == (2 * 24, 64, 1, 512)  # kv_c = cache[..., :512], a view
    assert c["v_buffer"].data_ptr() == inputs.kv_cache.data_ptr()
    assert c["o"].shape == (2, 16, 512) and c["o"].dtype == torch.bfloat16
    assert c["lse"].shape == (2, 16) and c["lse"].dtype == torch.bfloat16  # q's dtype, as vLLM allocates it
    assert c["attn_logits"].shape == (2, 16, 2, 513) and c["attn_logits"].dtype == torch.float32
    assert c["num_kv_splits"] == 2 and c["page_size"] == 64 and c["is_mla"] is True
    assert c["sm_scale"] == inputs.softmax_scale
    assert c["k_scale"] is inputs.kv_scale and c["v_scale"] is inputs.kv_scale
    assert c["req_to_token"] is inputs.block_table and c["b_seq_len"] is inputs.seq_lens
    assert prepared.out is c["o"] and prepared.lse is c["lse"]


def test_triton_gets_a_unit_scale_tensor_for_bf16():
    calls = []
    inputs = make_inputs(Shape(batch=1, heads=16, context=64, dtype="bf16", page_size=16), "cpu")
    bench_kernels.prepare_triton(bench_fakes.make_triton(calls=calls), inputs, sm_count=132).run()
    scale = calls[0]["k_scale"]
    assert torch.is_tensor(scale) and scale.dtype == torch.float32 and scale.numel() == 1 and float(scale) == 1.0


def test_multi_token_rows_are_expanded_causally_like_forward_mqa():
    table = torch.tensor([[5, 6], [7, 8]], dtype=torch.int32)
    lens = torch.tensor([20, 30], dtype=torch.int32)
    rows_table, rows_lens = bench_kernels.per_row_tables(table, lens, 3)
    assert rows_table.tolist() == [[5, 6]] * 3 + [[7, 8]] * 3
    assert rows_lens.tolist() == [18, 19, 20, 28, 29, 30]
    same_table, same_lens = bench_kernels.per_row_tables(table, lens, 1)
    assert same_table is table and same_lens is lens


def test_triton_multi_token_call_agrees_with_causal_reference():
    shape = Shape(batch=2, heads=16, context=40, dtype="bf16", page_size=16, query_len=3)
    inputs = make_inputs(shape, "cpu")
    prepared = bench_kernels.prepare_triton(bench_fakes.make_triton(), inputs, sm_count=132)
    prepared.run()
    ref_out, ref_lse = bench_fakes.reference(inputs.q, inputs.kv_cache, inputs.block_table, inputs.seq_lens,
                                             softmax_scale=inputs.softmax_scale, query_len=3)
    assert prepared.out.shape == (6, 16, 512)
    torch.testing.assert_close(prepared.out.float(), ref_out, atol=2e-2, rtol=0)
    torch.testing.assert_close(prepared.lse.float(), ref_lse, atol=0.1, rtol=0)


def test_ours_is_called_with_the_op_contract():
    calls = []
    shape = Shape(batch=2, heads=16, context=100, dtype="fp8", page_size=32, query_len=2)
    inputs = make_inputs(shape, "cpu")
    prepared = bench_kernels.prepare_ours(bench_fakes.make_ours(calls=calls), inputs)
    prepared.poison_outputs()
    assert torch.isnan(prepared.out.float()).all() and torch.isnan(prepared.lse).all()
    prepared.run()
    (c,) = calls
    assert c == dict(softmax_scale=inputs.softmax_scale, kv_scale=inputs.kv_scale, query_len=2, causal=True,
                     return_lse=True, max_seq_len=100)
    assert prepared.out.shape == (4, 16, 512) and prepared.out.dtype == torch.bfloat16
    assert prepared.lse.shape == (4, 16) and prepared.lse.dtype == torch.float32
    assert torch.isfinite(prepared.out.float()).all()


def test_ours_gets_the_planning_hint_it_is_given():
    calls = []
    inputs = make_inputs(Shape(batch=2, heads=16, context=100, dtype="bf16", page_size=32), "cpu")
    prepared = bench_kernels.prepare_ours(bench_fakes.make_ours(calls=calls), inputs, max_seq_len=131072)
    prepared.run()
    assert calls[0]["max_seq_len"] == 131072  # graph mode: planned for max_model_len
    assert prepared.plan == {"max_seq_len": 131072}


def test_ragged_eager_hint_is_the_longest_request():
    calls = []
    shape = Shape(batch=8, heads=16, context=3000, dtype="bf16", page_size=64, lengths="ragged")
    inputs = make_inputs(shape, "cpu", seed=3)
    assert inputs.max_seq_len < 3000  # the draw leaves room: the hint must not be the context
    bench_kernels.prepare_ours(bench_fakes.make_ours(calls=calls), inputs).run()
    assert calls[0]["max_seq_len"] == max(inputs.lengths)
    triton_calls = []
    prepared = bench_kernels.prepare_triton(bench_fakes.make_triton(calls=triton_calls), inputs, sm_count=132)
    prepared.run()
    splits = bench_kernels.num_kv_splits(max(inputs.lengths), 132)
    assert triton_calls[0]["num_kv_splits"] == splits and prepared.plan["num_kv_splits"] == splits
    assert triton_calls[0]["b_seq_len"].tolist() == inputs.lengths


def test_triton_in_graph_mode_plans_splits_and_logits_for_max_model_len():
    calls = []
    inputs = make_inputs(Shape(batch=2, heads=16, context=4096, dtype="bf16", page_size=64), "cpu")
    prepared = bench_kernels.prepare_triton(bench_fakes.make_triton(calls=calls), inputs, sm_count=132,
                                            max_seq_len=131072)
    prepared.run()
    (c,) = calls
    assert c["num_kv_splits"] == 256  # min(next_pow2(131072 // 512), 2 * 132), as vLLM captures it
    assert c["attn_logits"].shape == (2, 16, 256, 513)
    assert c["b_seq_len"].tolist() == [4096, 4096]  # replayed on the real lengths
    assert prepared.plan == {"max_seq_len": 131072, "num_kv_splits": 256}
    torch.testing.assert_close(prepared.out.float(), bench_fakes.reference(
        inputs.q, inputs.kv_cache, inputs.block_table, inputs.seq_lens,
        softmax_scale=inputs.softmax_scale)[0], atol=2e-2, rtol=0)


def test_ours_runs_with_the_residency_environment_only_inside_each_call(monkeypatch):
    monkeypatch.delenv("MLA_PLUGIN_SM12X_RESIDENCY", raising=False)
    seen = []

    def mla_decode(*args, **kwargs):
        seen.append(os.environ.get("MLA_PLUGIN_SM12X_RESIDENCY"))
        return bench_fakes.make_ours()(*args, **kwargs)

    inputs = make_inputs(Shape(batch=1, heads=16, context=64, dtype="bf16", page_size=16), "cpu")
    prepared = bench_kernels.prepare_ours(mla_decode, inputs, environment={"MLA_PLUGIN_SM12X_RESIDENCY": "1"})
    assert "MLA_PLUGIN_SM12X_RESIDENCY" not in os.environ
    prepared.run()
    assert seen == ["1"] and "MLA_PLUGIN_SM12X_RESIDENCY" not in os.environ
    assert prepared.plan["environment"] == {"MLA_PLUGIN_SM12X_RESIDENCY": "1"}


def test_triton_workspace_follows_the_planning_hint():
    shape = Shape(batch=128, heads=128, context=32768, dtype="bf16")
    graph = bench_kernels.triton_workspace_bytes(shape, 132, max_seq_len=131072)
    assert graph >= 128 * 128 * 256 * 513 * 4  # 256 splits at 131072
    assert graph > 3.9 * bench_kernels.triton_workspace_bytes(shape, 132)  # vs 64 at 32k


def test_triton_workspace_bytes():
    shape = Shape(batch=128, heads=128, context=32768, dtype="bf16")
    logits = 128 * 128 * 64 * 513 * 4  # 64 splits at 32k
    assert bench_kernels.triton_workspace_bytes(shape, 132) >= logits
    assert bench_kernels.triton_workspace_bytes(shape, 132) < logits * 1.01


def _write_fake_peer(folder: Path, tag: str) -> None:
    folder.mkdir(parents=True)
    (folder / "triton_decode_attention.py").write_text(
        f"TAG = {tag!r}\ndef decode_attention_fwd(*args, **kwargs):\n    return TAG\n")


def _is_peer_module(name: str) -> bool:
    return name in ("vllm", PEER) or name.startswith("vllm.")


PEER = "triton_decode_attention"


@pytest.fixture
def clean_import_state(monkeypatch):
    """Let the folder's kernel and vllm shim import fresh, and leave no shim module behind
    for later tests that import the real vLLM."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    saved = {name: module for name, module in sys.modules.items() if _is_peer_module(name)}
    for name in saved:
        del sys.modules[name]
    yield
    for name in [n for n in sys.modules if _is_peer_module(n)]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_triton_loads_from_the_fetched_folder(tmp_path, clean_import_state):
    folder = tmp_path / "peers" / "triton_mla"
    _write_fake_peer(folder, "peer")
    fn, source = bench_kernels.load_triton_mla(str(folder), prefer_vllm=False)
    assert fn() == "peer"
    assert str(folder) in source


def test_missing_triton_folder_says_what_to_do(tmp_path, clean_import_state):
    with pytest.raises(bench_kernels.KernelUnavailable) as err:
        bench_kernels.load_triton_mla(str(tmp_path / "nowhere"), prefer_vllm=False)
    text = str(err.value)
    assert "fetch-triton-mla" in text and "--no-triton" in text and "nowhere" in text


def test_triton_module_from_another_folder_is_refused(tmp_path, clean_import_state):
    _write_fake_peer(tmp_path / "a", "a")
    _write_fake_peer(tmp_path / "b", "b")
    bench_kernels.load_triton_mla(str(tmp_path / "a"), prefer_vllm=False)
    with pytest.raises(bench_kernels.KernelUnavailable, match="already imported"):
        bench_kernels.load_triton_mla(str(tmp_path / "b"), prefer_vllm=False)


# What ../shared/tools/fetch-triton-mla writes (the tool lives outside this repository, so the
# test lays the same folder out itself): vLLM's kernel file, unchanged, beside a two-module
# `vllm` shim that answers the only two imports the file makes.
SHIM_PLATFORMS = """class _Platform:
    @staticmethod
    def is_rocm():
        return False


current_platform = _Platform()
"""
SHIM_TRITON_UTILS = """import triton
import triton.language as tl

__all__ = ["triton", "tl"]
"""


def _vllm_kernel_file() -> Path:
    # vLLM comes with the test extra (pyproject.toml): a missing one fails here, it does not skip.
    spec = importlib.util.find_spec("vllm")
    assert spec is not None, "vLLM is not installed: pip install -e '.[test]'"
    return Path(spec.origin).parent / "v1" / "attention" / "ops" / "triton_decode_attention.py"


def _write_fetched_folder(dest: Path, kernel_source: str) -> None:
    (dest / "vllm" / "platforms").mkdir(parents=True)
    (dest / "vllm" / "triton_utils").mkdir(parents=True)
    (dest / "triton_decode_attention.py").write_text(kernel_source)
    (dest / "vllm" / "__init__.py").write_text("")
    (dest / "vllm" / "platforms" / "__init__.py").write_text(SHIM_PLATFORMS)
    (dest / "vllm" / "triton_utils" / "__init__.py").write_text(SHIM_TRITON_UTILS)


def test_the_real_kernel_file_needs_only_the_two_shim_modules():
    tree = ast.parse(_vllm_kernel_file().read_text())
    vllm_imports = {node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm"}
    vllm_imports |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names if alias.name.split(".")[0] == "vllm"}
    assert vllm_imports == {"vllm.platforms", "vllm.triton_utils"}
    uses = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "current_platform"}
    assert uses <= {"is_rocm"}  # all the platform shim answers


def test_fetched_folder_imports_the_real_kernel_through_the_shim(tmp_path, clean_import_state):
    dest = tmp_path / "peers" / "triton_mla"
    _write_fetched_folder(dest, _vllm_kernel_file().read_text())
    fn, source = bench_kernels.load_triton_mla(str(dest), prefer_vllm=False)
    assert fn.__name__ == "decode_attention_fwd" and fn.__module__ == "triton_decode_attention"
    assert str(dest) in source
    module = sys.modules["triton_decode_attention"]
    assert Path(module.__file__).parent == dest  # the folder's copy, not the installed vLLM's
    assert Path(sys.modules["vllm"].__file__).parent == dest / "vllm"  # and the shim, not vLLM
    assert module.is_hip_ is False
    params = list(inspect.signature(fn).parameters)
    assert params[:11] == ["q", "k_buffer", "v_buffer", "o", "lse", "req_to_token", "b_seq_len", "attn_logits",
                           "num_kv_splits", "sm_scale", "page_size"]  # as prepare_triton calls it
    assert {"k_scale", "v_scale", "is_mla"} <= set(params)
