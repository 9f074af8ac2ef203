"""The GPU tests themselves, run on the CPU against an emulated kernel (the emulated-GPU mode of
tests/gpu/conftest.py: mla_decode's real CUDA branch and launch plan on fake-CUDA tensors, the
compiled extension replaced by tests/gpu/emulate.py's arithmetic). No kernel runs here; what
this shows is that the GPU tests are runnable as written, that they pass a kernel doing exactly
the arithmetic the bounds describe, and that they fail the same kernel made worse the ways
scripts/mutation_check.sh makes the real one worse (plus a purely 2x-noisier P):

  p_drop_bits=1     MLA_MUTATE_P_DROP_BITS=1: 16-bit P truncated by one bit
  p_fewer_bits=1    P rounded to nearest with one significant bit fewer: exactly 2x P's error
  out_scale_ulps=1  MLA_MUTATE_OUT_SCALE_ULPS=1: output x (1 + 2^-9)

Each run is a pytest subprocess (the emulated mode is session-wide), a couple of minutes in all.
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
                "tests/gpu/test_decode_contract.py", "tests/gpu/test_fp8_math.py",
                "tests/gpu/test_variant_coverage.py"]


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
    # Skipped only where the emulation can't go (CUDA graphs) or the case is impossible (an
    # fp8 q with a bf16 cache): nothing else may skip into green.
    assert all("cuda_graph" in k or "misaligned_q_is_copied_and_still_right[bf16-fp8]" in k
               for k in skipped), skipped
    assert len(skipped) == 3, skipped
    assert sum(v == "passed" for v in results.values()) >= 80
    coverage = [k for k in results if k.endswith("test_every_compiled_variant_ran_at_every_page_size")]
    assert coverage and results[coverage[0]] == "passed"


@pytest.mark.parametrize("spec,expect_red", [
    # P truncated by one bit (the kernel's MLA_MUTATE_P_DROP_BITS=1): every 16-bit-P variant.
    ("p_drop_bits=1", lambda name: "mmafp8" not in name),
    # P exactly twice as noisy, unbiased: every variant, e4m3 P included.
    ("p_fewer_bits=1", lambda name: True),
    # Output scaled by 1 + 2^-9 (MLA_MUTATE_OUT_SCALE_ULPS=1): every variant with 16-bit P
    # (e4m3 P's own error, 2^-4, hides it: either outcome there).
    ("out_scale_ulps=1", lambda name: True if "mmafp8" not in name else None),
])
def test_gpu_tests_fail_a_mutated_emulated_kernel(tmp_path, spec, expect_red):
    results = run_emulated(tmp_path, spec, ["tests/gpu/test_variants.py", "-k", "bs16 and r16"])
    assert len(results) == 10, results
    wrong = {k: v for k, v in results.items()
             if expect_red(k) is not None and (v == "failed") != expect_red(k)}
    assert not wrong, f"{spec}: expected red exactly where the mutation bites; got {wrong}"
    assert any(v == "failed" for v in results.values())
