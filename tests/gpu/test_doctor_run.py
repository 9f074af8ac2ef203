"""`python -m mla_plugin doctor --run` for real, in a fresh process, on this machine's GPU(s):
exit status 0 and a well-formed JSON report. On Hopper it needs MLA_PLUGIN_ALLOW_SM90=1 (set
here). The report is also copied to $MLA_PLUGIN_DOCTOR_REPORT when that names a file (so a
GPU session can bring it back)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mla_plugin.doctor.selftest import CASES, TIME_TARGET_S, TIMED_SHAPES

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def doctor_run(tmp_path_factory):
    report = tmp_path_factory.mktemp("doctor") / "report.json"
    env = dict(os.environ, MLA_PLUGIN_ALLOW_SM90="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "mla_plugin", "doctor", "--run", "--json", str(report)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    keep = os.environ.get("MLA_PLUGIN_DOCTOR_REPORT")
    if keep:
        if report.exists():
            shutil.copyfile(report, keep)
        Path(keep).with_suffix(".txt").write_text(run.stdout + "\n--- stderr ---\n" + run.stderr)
    return run, report


def test_exit_status_0(doctor_run):
    run, _ = doctor_run
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}"
    assert run.stdout.splitlines()[-1].startswith("doctor --run: PASS")


def test_json_report_is_well_formed(doctor_run):
    run, report = doctor_run
    data = json.loads(report.read_text())
    st = data["self_test"]
    assert st["status"] == "pass" and st["ok"] is True and st["failures"] == []
    versions = st["versions"]
    for key in ("torch", "cuda", "driver", "triton", "mla_plugin", "kernel_sources"):
        assert versions.get(key), (key, versions)
    tested = [g for g in st["gpus"] if g["status"] != "skipped"]
    assert tested, st["gpus"]
    for gpu in tested:
        assert gpu["status"] == "passed"
        assert gpu["name"] and gpu["capability"] in ("9.0", "12.0", "12.1") and gpu["sm_count"] > 0
        assert gpu["kernel"]["source"]
        assert [c["name"] for c in gpu["cases"]] == [c.name for c in CASES]
        for case in gpu["cases"]:
            assert case["status"] == "pass", case
            assert case["nan_count"] == 0 and case["padding_rows_ok"] is True
            assert 0 <= case["max_abs"] <= case["tolerance"]["max_abs"]
            assert 0 <= case["mean_rel"] <= case["tolerance"]["mean_rel"]
        timings = gpu["timings"]
        if timings.get("skipped"):
            assert timings["skipped"].startswith("same GPU model as GPU")
            continue
        assert [row["label"] for row in timings["shapes"]] == [s.label for s in TIMED_SHAPES]
        assert all(row["ours_us"] > 0 and row["error"] is None for row in timings["shapes"])
        if timings["triton"].startswith("TRITON_MLA from "):
            assert all(row["triton_us"] and row["speedup"] for row in timings["shapes"]
                       if not row["triton_error"])
        else:
            assert timings["triton"].startswith("TRITON_MLA not available: ")


def test_under_a_minute_after_the_build(doctor_run):
    _, report = doctor_run
    for gpu in json.loads(report.read_text())["self_test"]["gpus"]:
        if gpu["status"] != "skipped":
            assert gpu["seconds_after_kernel"] < TIME_TARGET_S, gpu["seconds_after_kernel"]
