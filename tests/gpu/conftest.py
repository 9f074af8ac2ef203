"""GPU test fixtures: a per-session error log, printed (and saved when MLA_PLUGIN_GPU_REPORT
names a file) so a run's worst errors can be quoted; the variant-coverage test moved to the
end of the session; fp32 references kept in fp32 (no TF32).

Emulated-GPU mode, for machines WITHOUT a GPU only (it refuses to start where CUDA is
available): MLA_PLUGIN_TEST_EMULATED_GPU=1 (or a mutation such as p_drop_bits=1, see
tests/fake_cuda.parse_mutation) runs these tests on the CPU, mla_decode's CUDA branch on
fake-CUDA tensors down to a fake extension that computes the emulated kernel arithmetic
(tests/gpu/emulate.py). No kernel runs: it checks the tests themselves (tests/test_gpu_dry_run.py).
"""

from __future__ import annotations

import json
import math
import os

import pytest

COVERAGE_TEST = "test_every_compiled_variant_ran_at_every_page_size"

_LOG: list[dict] = []


def log_entry(case, err) -> dict:
    entry = {"case": str(case), "path": f"{case.dtype} {err.arith}", "max_abs": err.max_abs,
             "mean_abs": err.mean_abs, "mean_rel": err.mean_rel, "max_ratio": err.max_ratio,
             "worst": err.worst, "rho": None if math.isnan(err.rho) else err.rho,
             "rho_limit": None if math.isinf(err.rho_limit) else err.rho_limit, "bias": err.bias,
             "bias_limit": None if math.isinf(err.bias_limit) else err.bias_limit,
             "lse_max_abs": err.lse_max_abs, "lse_ratio": err.lse_ratio, "nan": err.nan_count}
    _LOG.append(entry)
    return entry


@pytest.fixture
def error_log():
    return log_entry


def move_last(items, name: str = COVERAGE_TEST) -> None:
    """Reorder in place: the items of test `name` after every other."""
    last = [i for i in items if getattr(i, "originalname", i.name) == name]
    if last:
        items[:] = [i for i in items if i not in last] + last


def pytest_collection_modifyitems(config, items):
    move_last(items)


def pytest_configure(config):
    spec = os.environ.get("MLA_PLUGIN_TEST_EMULATED_GPU")
    if not spec:
        return
    import torch

    if torch.cuda.is_available():
        raise pytest.UsageError("MLA_PLUGIN_TEST_EMULATED_GPU runs the GPU tests against an emulated "
                                "kernel, for machines without a GPU: unset it to test the real kernel")
    from tests import fake_cuda

    from . import cases

    mutation = fake_cuda.parse_mutation(spec)
    # A build with the kernel's mutation macros (scripts/mutation_check.sh): the same mutation.
    mutation.update(fake_cuda.mutation_from_defines(os.environ.get("MLA_PLUGIN_NVCC_DEFINES", "")))
    ext = fake_cuda.FakeExtension(fake_cuda.emulated_kernel(**mutation))
    ext.CLUSTERS = 1024  # as a GPU with clusters answers: plans merge 2-8 splits in a cluster
    undo = fake_cuda.install_globally(ext)
    saved = (cases.DEVICE, cases.ADAPTER, cases.EMULATED)
    described = ",".join(f"{k}={v}" for k, v in mutation.items()) or "honest"
    cases.DEVICE, cases.ADAPTER, cases.EMULATED = "cpu", fake_cuda.call_as_cuda, described

    def restore():
        cases.DEVICE, cases.ADAPTER, cases.EMULATED = saved
        undo()

    config.add_cleanup(restore)


@pytest.fixture(scope="session", autouse=True)
def _fp32_references_in_fp32():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def summary_lines(log: list[dict]) -> list[str]:
    lines = []
    for path in sorted({r["path"] for r in log}):
        rows = [r for r in log if r["path"] == path]
        worst = max(rows, key=lambda r: r["max_ratio"])
        rhos = [r for r in rows if r["rho"] is not None]
        line = (f"{path}: {len(rows)} cases; worst max|err| {worst['max_abs']:.3g} = "
                f"{worst['max_ratio']:.2f} x bound in {worst['case']}")
        if rhos:
            top = max(rhos, key=lambda r: r["rho"] / r["rho_limit"])
            line += (f"; mean error / predicted {min(r['rho'] for r in rhos):.2f}..{top['rho']:.2f} "
                     f"(limit {top['rho_limit']:.2f})")
        line += (f"; mean rel {max(r['mean_rel'] for r in rows):.2e}; worst lse err "
                 f"{max(r['lse_max_abs'] for r in rows):.3g}; NaN {sum(r['nan'] for r in rows)}")
        lines.append(line)
    return lines


def pytest_terminal_summary(terminalreporter):
    if not _LOG:
        return
    tr = terminalreporter
    tr.section("mla_plugin GPU error summary")
    from . import cases

    if cases.EMULATED:
        tr.write_line(f"EMULATED GPU ({cases.EMULATED}): no kernel ran, these are the emulation's errors")
    for line in summary_lines(_LOG):
        tr.write_line(line)
    path = os.environ.get("MLA_PLUGIN_GPU_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(_LOG, f, indent=1)
