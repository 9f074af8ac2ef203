"""The serve flags in deploy/compose.yaml and deploy/k8s/deployment.yaml are arguments of the
image's entrypoint, `vllm serve`: vLLM's own serve parser reads them, they select
MLA_XQA_SM120, and they listen where the ports, probes and health checks look."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose_args() -> list[str]:
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    return [str(a) for a in next(iter(compose["services"].values()))["command"]]


def _deployment_args() -> list[str]:
    deployment = yaml.safe_load((ROOT / "deploy/k8s/deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return [str(a) for a in container["args"]]


@pytest.mark.parametrize("args_of", [_compose_args, _deployment_args], ids=["compose", "k8s"])
def test_vllm_parses_the_serve_flags(serve_parser, args_of):
    from vllm.config.attention import AttentionConfig
    from vllm.plugins import load_general_plugins
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    args = serve_parser.parse_args(["serve", *args_of()])
    assert args.model_tag == "deepseek-ai/DeepSeek-V2-Lite-Chat"
    assert (args.dtype, args.kv_cache_dtype) == ("bfloat16", "bfloat16")
    assert args.tensor_parallel_size == 1 and args.block_size == 64
    assert (args.host, args.port) == ("0.0.0.0", 8000)
    load_general_plugins()
    assert AttentionConfig.validate_backend_before(args.attention_backend) is \
        AttentionBackendEnum.MLA_XQA_SM120


def test_compose_and_kubernetes_serve_the_same_way():
    assert _compose_args() == _deployment_args()
