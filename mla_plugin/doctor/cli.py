"""`python -m mla_plugin doctor [--run] [--json [FILE]]`: can this machine serve
MLA_XQA_SM120, and (with --run) is the kernel right on its GPUs?

Prints the versions (Python, torch and its CUDA, vLLM, nvcc), every visible GPU (name,
compute capability, opt-in shared memory per block, served or why not, kernel prebuilt /
JIT / missing), the entry point, what MLA_XQA_SM120 and TRITON_MLA resolve to in vLLM
(MLA_PLUGIN_REPLACE_TRITON_MLA), and the serve command. Exit status: 0 when nothing blocks
serving, 1 when something does (each reason printed as `BLOCKED <code>: <what and what to
do>`).

--run adds the self-test (selftest.py: decode cases against the fp32 reference and timings
against TRITON_MLA on each served GPU, progress on stderr); its exit status is then the
self-test's: 0 pass, 1 nothing could be tested, 2 a wrong case or a failure.
--json prints the whole report as one JSON object instead of text; --json FILE writes it
to FILE and prints the text.

Facts come from facts.gather(), the judgement from verdict.diagnose().
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback

from mla_plugin.doctor import facts as doctor_facts
from mla_plugin.doctor import verdict as doctor_verdict
from mla_plugin.doctor.facts import ENTRY_POINT_GROUP, ENTRY_POINT_NAME, Facts
from mla_plugin.doctor.verdict import Verdict
from mla_plugin.refusals import BACKEND

EXIT_OK = 0
EXIT_BLOCKED = 1


EXIT_RUN_FAILED = 2  # --run: a wrong case, or the kernel failed on a served GPU


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help="the whole report as one JSON object: on stdout instead of the "
                             "text, or written to FILE (the text still printed)")
    parser.add_argument("--run", action="store_true",
                        help="also run the self-test on each served GPU: build or load the "
                             "kernel, check fixed decode cases against the fp32 reference, time "
                             "a few shapes against TRITON_MLA (under a minute after the build); "
                             "exit 0 pass, 1 nothing to test, 2 wrong case or failure")


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


def report_dict(facts: Facts, verdict: Verdict, self_test: dict | None = None) -> dict:
    report = {"facts": facts.to_dict(), **verdict.to_dict()}
    if self_test is not None:
        report["self_test"] = self_test
    return report


def render_json(facts: Facts, verdict: Verdict, self_test: dict | None = None) -> str:
    from mla_plugin.doctor.selftest import json_safe

    return json.dumps(json_safe(report_dict(facts, verdict, self_test)), indent=2,
                      allow_nan=False)


def make_runner():
    """The real GPU runner (imports torch): tests replace this."""
    from mla_plugin.doctor.gpu import CudaRunner

    return CudaRunner()


def run_self_test(facts: Facts, verdict: Verdict) -> dict:
    """selftest.run_selftest with the real runner; whatever goes wrong outside the per-GPU
    steps (which record their own failures) still ends as a FAIL report, never a crash."""
    from mla_plugin.doctor import selftest

    def failed(stage: str, exc: BaseException) -> dict:
        traceback.print_exc(file=sys.stderr)
        return selftest.failed_report(stage, f"{type(exc).__name__}: {exc}")

    runner = selftest.Runner()
    if facts.torch is not None and facts.torch_cuda is not None and any(g.served for g in verdict.gpus):
        try:
            runner = make_runner()
        except Exception as exc:  # a broken torch: say it, don't crash
            return failed("runner", exc)
    try:
        return selftest.run_selftest(facts, verdict, runner)
    except Exception as exc:
        return failed("internal", exc)


def main(args) -> int:
    target = getattr(args, "json", None)
    target = "-" if target is True else (None if target is False else target)
    run = getattr(args, "run", False)
    # vLLM's logger writes to stdout: keep stdout for our report (and valid JSON).
    with contextlib.redirect_stdout(sys.stderr):
        facts = doctor_facts.gather()
        verdict = doctor_verdict.diagnose(facts)
        self_test = run_self_test(facts, verdict) if run else None
    if target == "-":
        print(render_json(facts, verdict, self_test), flush=True)
    else:
        from mla_plugin.doctor.selftest import render_text as render_self_test

        text = render_text(facts, verdict)
        if self_test is not None:
            text += "\n" + "\n".join(render_self_test(self_test))
        print(text, flush=True)
        if target:
            try:
                with open(target, "w") as f:
                    f.write(render_json(facts, verdict, self_test) + "\n")
            except OSError as exc:
                print(f"doctor: cannot write the JSON report to {target}: {exc}", file=sys.stderr)
                return EXIT_RUN_FAILED if run else EXIT_BLOCKED
            print(f"doctor: JSON report written to {target}", file=sys.stderr)
    if self_test is not None:
        return self_test["exit_status"]
    return EXIT_OK if verdict.ok else EXIT_BLOCKED
