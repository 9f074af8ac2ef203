"""`python -m mla_plugin doctor [--json]`: can this machine serve MLA_XQA_SM120?

Prints the versions (Python, torch and its CUDA, vLLM, nvcc), every visible GPU (name,
compute capability, opt-in shared memory per block, served or why not, kernel prebuilt /
JIT / missing), the entry point and what MLA_XQA_SM120 resolves to in vLLM, and the serve
command. Exit status: 0 when nothing blocks serving, 1 when something does (each reason
printed as `BLOCKED <code>: <what and what to do>`).

Facts come from facts.gather(), the judgement from verdict.diagnose().
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from mla_plugin.doctor import facts as doctor_facts
from mla_plugin.doctor import verdict as doctor_verdict
from mla_plugin.doctor.facts import ENTRY_POINT_GROUP, ENTRY_POINT_NAME, Facts
from mla_plugin.doctor.verdict import Verdict
from mla_plugin.refusals import BACKEND

EXIT_OK = 0
EXIT_BLOCKED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (facts and verdict) instead of text")


def _or(value, missing: str) -> str:
    return str(value) if value is not None else missing


def render_text(facts: Facts, verdict: Verdict) -> str:
    lines = ["mla_plugin doctor"]
    torch_line = _or(facts.torch, f"not importable ({facts.torch_error})")
    if facts.torch is not None:
        torch_line += f" (CUDA {facts.torch_cuda})" if facts.torch_cuda else " (CPU-only build)"
    nvcc_line = (f"{_or(facts.nvcc_version, 'unknown version')} ({facts.nvcc})" if facts.nvcc
                 else "not found (no CUDA toolkit: JIT builds impossible)")
    entry_line = (f"{ENTRY_POINT_GROUP}: {ENTRY_POINT_NAME} = {facts.entry_point}"
                  if facts.entry_point else f"{ENTRY_POINT_GROUP}: {ENTRY_POINT_NAME} not installed")
    if facts.vllm is None:
        backend_line = "not checked (no vLLM)"
    else:
        backend_line = (f"{BACKEND} -> {facts.backend}" if facts.backend
                        else f"{BACKEND} unresolved ({facts.backend_error})")
    kernels = facts.prebuilt_dir and f"$MLA_PLUGIN_PREBUILT_DIR={facts.prebuilt_dir}, then "
    lines += [
        f"  python       {facts.python}",
        f"  torch        {torch_line}",
        f"  vllm         {_or(facts.vllm, f'not importable ({facts.vllm_error})')}",
        f"  nvcc         {nvcc_line}",
        f"  entry point  {entry_line}",
        f"  backend      {backend_line}",
        f"  TRITON_MLA   {verdict.triton_mla}",
        f"  kernels      looked up in {kernels or ''}{_or(facts.cache_dir, 'the cache')}",
        f"GPUs: {len(verdict.gpus)} visible",
    ]
    for g in verdict.gpus:
        status = "served" if g.served else f"not served: {g.reason}"
        lines.append(f"  GPU {g.index}  {g.name}  compute capability {g.capability}  "
                     f"opt-in smem/block {g.smem_optin} B  {status}")
        if g.served:
            lines.append(f"         kernel {g.kernel}: {g.kernel_detail}")
    if facts.gpu_error and verdict.gpus:  # with no GPU, the no-gpu problem says it
        lines.append(f"  ({facts.gpu_error})")
    lines += [f"warning: {w}" for w in verdict.warnings]
    lines += [f"BLOCKED {p.code}: {p.message}" for p in verdict.problems]
    if verdict.ok:
        lines.append(f"serve: {verdict.serve_command}")
        if verdict.zero_flag_command:
            lines.append(f"   or: {verdict.zero_flag_command}")
        lines.append("doctor: OK")
    else:
        lines.append(f"doctor: BLOCKED ({', '.join(p.code for p in verdict.problems)})")
    return "\n".join(lines)


def render_json(facts: Facts, verdict: Verdict) -> str:
    return json.dumps({"facts": facts.to_dict(), **verdict.to_dict()}, indent=2)


def main(args) -> int:
    # vLLM's logger writes to stdout: keep stdout for our report (and valid JSON).
    with contextlib.redirect_stdout(sys.stderr):
        facts = doctor_facts.gather()
    verdict = doctor_verdict.diagnose(facts)
    print(render_json(facts, verdict) if args.json else render_text(facts, verdict), flush=True)
    return EXIT_OK if verdict.ok else EXIT_BLOCKED
