"""The GPU tests themselves, run on the CPU against an emulated kernel (the emulated-GPU mode of
tests/gpu/conftest.py: mla_decode's real CUDA branch and launch plan on fake-CUDA tensors, the
compiled extension replaced by tests/gpu/emulate.py's arithmetic). No kernel runs here; what
this shows is that the GPU tests are runnable as written, that they pass a kernel doing exactly
the arithmetic the bounds describe, and that they fail it with twice P's rounding error
(tests/test_mutation_check.py runs the kernel's own mutations through scripts/mutation_check.sh).
Each run is a pytest subprocess (the emulated mode is session-wide), about two minutes in all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HONEST_FILES = ["tests/gpu/test_variants.py", "tests/gpu/test_kernel_traps.py",
                "tests/gpu/test_decode_contract.py", "tests/gpu/test_fp8_math.py", "tests/gpu/test_cluster_merge.py",
                "tests/gpu/test_balanced_splits.py", "tests/gpu/test_variant_coverage.py"]


def run_emulated(tmp_path, spec: str, args: list[str]) -> dict:
    """pytest in the emulated-GPU mode; {test id: "passed" | "failed" | "skipped" | "error"}."""
    report = tmp_path / f"{spec.replace('=', '_').replace(',', '_')}.xml"
    env = dict(os.environ, MLA_PLUGIN_TEST_EMULATED_GPU=spec, CUDA_VISIBLE_DEVICES="")
    env.pop("MLA_PLUGIN_FP8_MATH", None)
    env.pop("MLA_PLUGIN_ROWS_PER_CTA", None)
    env.pop("MLA_PLUGIN_SPLITS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                           f"--junitxml={report}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        results[name] = outcome
    assert "EMULATED GPU" in proc.stdout, proc.stdout[-3000:]
    return results


def test_gpu_tests_pass_the_honest_emulated_kernel(tmp_path):
    results = run_emulated(tmp_path, "1", HONEST_FILES)
    bad = {k: v for k, v in results.items() if v not in ("passed", "skipped")}
    assert not bad, bad
    skipped = sorted(k for k, v in results.items() if v == "skipped")
    # Skipped only where the emulation can't go (CUDA graphs): nothing else may skip into green.
    assert all("cuda_graph" in k for k in skipped), skipped
    assert len(skipped) == 6, skipped
    assert sum(v == "passed" for v in results.values()) >= 80
    coverage = [k for k in results if k.endswith("test_every_compiled_variant_ran_at_every_page_size")]
    assert coverage and results[coverage[0]] == "passed"


def test_gpu_tests_fail_a_kernel_with_twice_the_p_rounding_error(tmp_path):
    # P rounded to nearest with one significant bit fewer: exactly twice P's error, unbiased,
    # on every path (e4m3 P included). The kernel's own mutation hooks are run through
    # scripts/mutation_check.sh in tests/test_mutation_check.py.
    results = run_emulated(tmp_path, "p_fewer_bits=1", ["tests/gpu/test_variants.py", "-k", "bs16 and r16"])
    assert len(results) == 40, results  # 10 variants x 4 split modes
    assert all(v == "failed" for v in results.values()), results
