"""Tests of the plugin against the real vLLM 0.33 (CPU only).

vLLM must be installed for them: they fail, never skip, when it is missing, so a broken
test environment can't pass as green. Modules here import vLLM inside tests/fixtures,
not at import time, so a GPU-only run (`pytest -m gpu`, no vLLM) still collects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# No GPU on the CI machine: vLLM can't infer a device without this (set before any
# vLLM import; the subprocess tests pass it on through the environment).
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

REQUIRED_VLLM = "0.33.0"
HERE = Path(__file__).parent

# A DeepSeek-V3-shaped model small enough to configure on a CPU: the MLA dims are the
# real ones (kv_lora_rank 512 + qk_rope_head_dim 64 = head size 576), the rest is tiny.
TINY_DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "kv_lora_rank": 512,
    "q_lora_rank": 192,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.0,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": 0,
    "eos_token_id": 1,
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session", autouse=True)
def real_vllm():
    """The installed vLLM, or a loud failure."""
    try:
        import vllm
    except ImportError as exc:
        pytest.fail(
            f"these tests need vllm=={REQUIRED_VLLM} installed (python -m pip install -e '.[test]'); "
            f"importing it failed: {exc}",
            pytrace=False,
        )
    if vllm.__version__ != REQUIRED_VLLM:
        pytest.fail(f"these tests need vllm=={REQUIRED_VLLM}, found {vllm.__version__}",
                    pytrace=False)
    return vllm


@pytest.fixture(scope="session")
def tiny_model_config() -> dict:
    return dict(TINY_DEEPSEEK_V3)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model_config) -> Path:
    """A model folder holding only config.json: vLLM configures it with no download."""
    path = tmp_path_factory.mktemp("tiny-deepseek-v3")
    (path / "config.json").write_text(json.dumps(tiny_model_config))
    return path


@pytest.fixture(scope="session")
def serve_parser():
    """`vllm serve`'s argument parser, built as vLLM's CLI builds it (FlexibleArgumentParser
    with the serve subcommand): parse ["serve", ...] with it."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    return parser
