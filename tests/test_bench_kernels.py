"""How the bench loads and calls the contenders, checked on the CPU with fakes."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_fakes sits beside the tests
import bench_fakes  # noqa: E402
from mla_plugin.bench import kernels as bench_kernels  # noqa: E402
from mla_plugin.bench.grid import Shape  # noqa: E402
from mla_plugin.bench.inputs import make_inputs  # noqa: E402

SHARED_TOOL = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "fetch-triton-mla"


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


# The layout shared/tools/fetch-triton-mla makes: vLLM's kernel file beside a two-module shim
# (the tool's own text, copied here so the test needs nothing outside the repository).
SHIM_PLATFORMS = """# Shim: the kernel file asks only whether it runs on ROCm.
class _Platform:
    @staticmethod
    def is_rocm():
        return False


current_platform = _Platform()
"""
SHIM_TRITON_UTILS = """# Shim: the kernel file imports triton and tl from here.
import triton
import triton.language as tl

__all__ = ["triton", "tl"]
"""


def _installed_vllm_kernel() -> Path:
    spec = importlib.util.find_spec("vllm")
    assert spec is not None, "vLLM (the test extra) is needed: its Triton MLA kernel file is the peer"
    assert importlib.util.find_spec("triton") is not None, "triton (torch's dependency) is needed"
    return Path(spec.origin).parent / "v1" / "attention" / "ops" / "triton_decode_attention.py"


def make_peer_folder(dest: Path) -> Path:
    """What fetch-triton-mla puts into DEST, from the installed vLLM's kernel file."""
    (dest / "vllm" / "platforms").mkdir(parents=True)
    (dest / "vllm" / "triton_utils").mkdir(parents=True)
    shutil.copy(_installed_vllm_kernel(), dest / "triton_decode_attention.py")
    (dest / "vllm" / "__init__.py").write_text("")
    (dest / "vllm" / "platforms" / "__init__.py").write_text(SHIM_PLATFORMS)
    (dest / "vllm" / "triton_utils" / "__init__.py").write_text(SHIM_TRITON_UTILS)
    return dest


def test_a_fetch_triton_mla_folder_imports_the_real_kernel(tmp_path, clean_import_state):
    # Runs everywhere the test extra is installed (CI included): the folder is made here.
    dest = make_peer_folder(tmp_path / "peers" / "triton_mla")
    fn, source = bench_kernels.load_triton_mla(str(dest), prefer_vllm=False)
    assert fn.__name__ == "decode_attention_fwd" and fn.__module__ == "triton_decode_attention"
    assert str(dest) in source
    assert "vllm" not in sys.modules or str(dest) in (sys.modules["vllm"].__file__ or "")  # the shim, not vLLM


@pytest.mark.skipif(not SHARED_TOOL.exists(), reason="shared/tools/fetch-triton-mla is not beside the repo "
                    "(test_a_fetch_triton_mla_folder_imports_the_real_kernel covers the folder it makes)")
@pytest.mark.skipif(shutil.which("unzip") is None, reason="fetch-triton-mla needs unzip")
def test_the_shared_fetch_tool_makes_that_folder(tmp_path, clean_import_state):
    # Give the tool a wheel in its cache (made from the installed vLLM's file), so it runs offline.
    kernel = _installed_vllm_kernel()
    wheels = tmp_path / "cache" / "mla_plugin" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "vllm-0.33.0-cp38-abi3-linux_x86_64.whl", "w") as whl:
        whl.write(kernel, "vllm/v1/attention/ops/triton_decode_attention.py")
    dest = tmp_path / "peers" / "triton_mla"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), VLLM_VERSION="0.33.0")
    subprocess.run(["bash", str(SHARED_TOOL), str(dest)], check=True, env=env, capture_output=True)
    ours = make_peer_folder(tmp_path / "ours")
    made = sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    for rel in made:  # the copy in this test is the tool's layout, byte for byte
        assert (dest / rel).read_bytes() == (ours / rel).read_bytes(), rel
    fn, _ = bench_kernels.load_triton_mla(str(dest), prefer_vllm=False)
    assert fn.__name__ == "decode_attention_fwd"
