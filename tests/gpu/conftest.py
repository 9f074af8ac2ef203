"""GPU test fixtures: a per-session error log, printed (and saved when MLA_PLUGIN_GPU_REPORT
names a file) so a run's worst errors can be quoted."""

from __future__ import annotations

import json
import os

import pytest

_LOG: list[dict] = []


@pytest.fixture
def error_log():
    def record(case, err):
        _LOG.append({"case": str(case), "dtype": case.dtype, "max_abs": err.max_abs,
                     "mean_abs": err.mean_abs, "lse_max_abs": err.lse_max_abs,
                     "bound": err.bound, "nan": err.nan_count})
    return record


def pytest_terminal_summary(terminalreporter):
    if not _LOG:
        return
    tr = terminalreporter
    tr.section("mla_plugin GPU error summary")
    for dtype in sorted({r["dtype"] for r in _LOG}):
        rows = [r for r in _LOG if r["dtype"] == dtype]
        worst = max(rows, key=lambda r: r["max_abs"] / max(r["bound"], 1e-12))
        tr.write_line(f"{dtype}: {len(rows)} cases; worst max|err| {worst['max_abs']:.3g} "
                      f"(bound {worst['bound']:.3g}) in {worst['case']}; worst lse err "
                      f"{max(r['lse_max_abs'] for r in rows):.3g}; NaN {sum(r['nan'] for r in rows)}")
    path = os.environ.get("MLA_PLUGIN_GPU_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(_LOG, f, indent=1)
