"""mla_plugin without vLLM (the GPU test machine has torch only): the op works,
register() does nothing, and importing the package pulls in neither torch nor vLLM."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Runs in a fresh interpreter where `import vllm` fails as if it were not installed.
SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["vllm"] = None  # an import of vllm now raises ImportError

    import mla_plugin
    assert "torch" not in sys.modules, "import mla_plugin imported torch"
    assert mla_plugin.register() is None
    mla_plugin.register()  # twice: still nothing

    import torch
    from mla_plugin.ops import mla_decode
    kv_cache = torch.randn(2, 16, 576, dtype=torch.bfloat16)
    q = torch.randn(1, 2, 576, dtype=torch.bfloat16)
    out = mla_decode(q, kv_cache, torch.tensor([[1]], dtype=torch.int32),
                     torch.tensor([1], dtype=torch.int32), softmax_scale=0.1)
    assert torch.equal(out[0, 0], kv_cache[1, 0, :512]), "one token: out is its V row"
    assert not any(name == "vllm" or name.startswith("vllm.")
                   for name, module in sys.modules.items() if module is not None)
    print("ok")
""")


def test_op_and_register_work_without_vllm():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok")
