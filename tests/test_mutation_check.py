"""scripts/mutation_check.sh and its report helper, on the CPU: the counting and the verdicts,
and the script end to end in emulated-GPU mode (no build; the GPU tests run against the
emulated kernel, which applies the kernel's mutation macros named in MLA_PLUGIN_NVCC_DEFINES)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "mutation_check.sh"
sys.path.insert(0, str(REPO / "scripts"))
import mutation_report  # noqa: E402


def _junit(path: Path, tests: int, failures: int = 0, errors: int = 0, skipped: int = 0) -> Path:
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
                    f'tests="{tests}" failures="{failures}" errors="{errors}" skipped="{skipped}">'
                    '</testsuite></testsuites>')
    return path


def test_counts_read_pytests_junit_report(tmp_path):
    c = mutation_report.counts(_junit(tmp_path / "r.xml", 10, failures=3, errors=1, skipped=2))
    assert c == {"passed": 4, "failed": 3, "errors": 1, "skipped": 2}
    assert mutation_report.counts(tmp_path / "missing.xml")["errors"] == 1


@pytest.mark.parametrize("c,rc,mutated,ok,why", [
    (dict(passed=40, failed=0, errors=0, skipped=0), 0, False, True, "green, as it must be"),
    (dict(passed=39, failed=1, errors=0, skipped=0), 1, False, False, "RED"),
    (dict(passed=39, failed=0, errors=0, skipped=1), 0, False, False, "1 skipped"),
    (dict(passed=0, failed=0, errors=0, skipped=40), 0, False, False, "no test ran"),
    (dict(passed=10, failed=30, errors=0, skipped=0), 1, True, True, "red, as it must be"),
    (dict(passed=40, failed=0, errors=0, skipped=0), 0, True, False, "GREEN"),
    (dict(passed=0, failed=0, errors=1, skipped=0), 2, True, False, "errors"),  # a failed build is no red
])
def test_verdicts(c, rc, mutated, ok, why):
    got_ok, got_why = mutation_report.verdict(c, rc, mutated)
    assert got_ok == ok and why in got_why


def test_the_line_and_exit_status(tmp_path, capsys):
    report = _junit(tmp_path / "r.xml", 40, failures=12)
    assert mutation_report.main(["line", "MLA_MUTATE_P_DROP_BITS=1", str(report), "1", "42", "--mutated"]) == 0
    assert capsys.readouterr().out.strip() == ("MLA_MUTATE_P_DROP_BITS=1: 28 passed, 12 failed, 0 errors, "
                                               "0 skipped in 42 s -> red, as it must be")
    assert mutation_report.main(["line", "unmutated", str(report), "1", "42"]) == 1


def _run_script(tmp_path, *pytest_args):
    env = dict(os.environ, MLA_PLUGIN_TEST_EMULATED_GPU="1", CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path / "out"),
               PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *pytest_args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.mark.slow
def test_the_script_passes_when_each_mutation_turns_the_tests_red(tmp_path):
    # 16-bit-P variants at 16 rows per CTA, block size 16 (6 variants x 4 split modes): both
    # mutations bite on every one.
    res = _run_script(tmp_path, "-k", "test_variant_matches_reference and bs16 and r16 and not mmafp8")
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines[0].startswith("EMULATED GPU") and lines[-1].startswith("mutation check: PASSED")
    assert lines[1].startswith("unmutated: 24 passed, 0 failed") and lines[1].endswith("green, as it must be")
    assert lines[2].startswith("MLA_MUTATE_P_DROP_BITS=1: 0 passed, 24 failed") and lines[2].endswith("red, as it must be")
    assert lines[3].startswith("MLA_MUTATE_OUT_SCALE_ULPS=1: 0 passed, 24 failed")


@pytest.mark.slow
def test_the_script_fails_when_a_mutation_goes_unseen(tmp_path):
    # e4m3 P variants only (4 x 4 split modes): the 16-bit-P mutation cannot touch them, so its
    # run stays green.
    res = _run_script(tmp_path, "-k", "test_variant_matches_reference and bs16 and r16 and mmafp8")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "MLA_MUTATE_P_DROP_BITS=1: 16 passed, 0 failed" in res.stdout
    assert "GREEN: the suite does not see this mutation" in res.stdout
    assert res.stdout.strip().splitlines()[-1].startswith("mutation check: FAILED")
