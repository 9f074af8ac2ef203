"""configs/serve/*.yaml through vLLM's own `vllm serve --config FILE` parsing: the serve
subcommand's parser (FlexibleArgumentParser + make_arg_parser, as vLLM's CLI builds it)
reads each file, every key is an option vLLM knows, and the values are the ones we mean:
MLA_XQA_SM120 (resolved to the registered backend), the KV-cache dtype, TP/PP sizes,
block size 64."""

from __future__ import annotations

import pytest

from mla_plugin import _paths, refusals

SERVE_DIR = _paths.configs_dir() / "serve"

# file -> (model, kv-cache-dtype, tensor-parallel-size, pipeline-parallel-size)
EXPECTED = {
    "deepseek-v2-lite-bf16-tp1.yaml": ("deepseek-ai/DeepSeek-V2-Lite-Chat", "bfloat16", 1, 1),
    "deepseek-r1-fp8kv-tp2.yaml": ("deepseek-ai/DeepSeek-R1-0528", "fp8", 2, 4),
    "deepseek-r1-fp8kv-tp4.yaml": ("deepseek-ai/DeepSeek-R1-0528", "fp8", 4, 2),
    "deepseek-r1-fp8kv-tp8.yaml": ("deepseek-ai/DeepSeek-R1-0528", "fp8", 8, 1),
    "kimi-k2-fp8kv-tp8.yaml": ("moonshotai/Kimi-K2-Thinking", "fp8", 8, 1),
}


def test_every_serve_config_is_checked():
    assert sorted(p.name for p in SERVE_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vllm_parses_the_serve_config(serve_parser, name):
    from vllm.config.attention import AttentionConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.plugins import load_general_plugins
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    model, kv_cache_dtype, tp, pp = EXPECTED[name]
    args = serve_parser.parse_args(["serve", "--config", str(SERVE_DIR / name)])
    assert args.model == model
    assert args.attention_backend == "MLA_XQA_SM120"
    assert args.kv_cache_dtype == kv_cache_dtype
    assert kv_cache_dtype in refusals.SUPPORTED_KV_CACHE_DTYPES
    if kv_cache_dtype in ("bfloat16", "float16"):  # a 16-bit cache must be the model's dtype
        assert args.dtype == kv_cache_dtype
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (tp, pp)
    assert args.block_size == 64
    assert args.trust_remote_code is True
    assert 4096 <= args.max_model_len <= 163840
    assert 0.5 <= args.gpu_memory_utilization <= 0.95

    engine_args = EngineArgs.from_cli_args(args)
    assert (engine_args.model, engine_args.tensor_parallel_size) == (model, tp)
    load_general_plugins()  # as vLLM does before it builds the engine config
    backend = AttentionConfig.validate_backend_before(engine_args.attention_backend)
    assert backend is AttentionBackendEnum.MLA_XQA_SM120
    assert backend.get_path() == "mla_plugin.backend.XqaMlaBackend"


def test_a_cli_flag_overrides_the_config(serve_parser):
    args = serve_parser.parse_args(["serve", "--config", str(SERVE_DIR / "deepseek-r1-fp8kv-tp8.yaml"),
                                    "--max-model-len", "8192"])
    assert args.max_model_len == 8192 and args.tensor_parallel_size == 8
