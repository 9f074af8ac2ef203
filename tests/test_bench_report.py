"""Table, summary, CSV, JSON and plot writing from given results (no GPU needed)."""

import csv
import json
import sys

import pytest

from mla_plugin.bench import report as bench_report


def _row(batch, heads, dtype, ours_us, triton_us, status="ok", note=""):
    speedup = triton_us / ours_us if ours_us and triton_us else None
    return {
        "label": f"B{batch} H{heads} 4k {dtype}", "batch": batch, "heads": heads, "context": 4096,
        "dtype": dtype, "page_size": 64, "query_len": 1, "status": status, "note": note,
        "ours_us": ours_us, "triton_us": triton_us, "speedup": speedup,
        "flops": 1, "bytes": 2, "ours_gbs": 1500.0 if ours_us else None,
        "ours_pct_copy_bw": 50.0 if ours_us else None, "ours_tflops": 12.5 if ours_us else None,
        "ours_pct_mma_peak": 2.0 if ours_us else None, "ours_pct_roofline": 40.0 if ours_us else None,
        "triton_pct_roofline": 20.0 if triton_us else None,
    }


ROWS = [
    _row(1, 16, "bf16", 10.0, 20.0),
    _row(8, 16, "bf16", 10.0, 80.0),
    _row(1, 16, "fp8", 10.0, 10.0),
    _row(8, 16, "fp8", None, 30.0, status="wrong", note="WRONG vs reference: max abs 1"),
    _row(128, 128, "fp8", None, None, status="skipped", note="needs about 90.0 GB, 70.0 GB free"),
]


def test_summary_geomeans_per_dtype_and_overall():
    s = bench_report.summarize(ROWS)
    assert s["geomean_speedup"]["bf16"] == pytest.approx(4.0)   # sqrt(2 * 8)
    assert s["geomean_speedup"]["fp8"] == pytest.approx(1.0)    # the wrong shape is left out
    assert s["geomean_speedup"]["all"] == pytest.approx((2 * 8 * 1) ** (1 / 3))
    assert s["geomean_pct_roofline"]["bf16"] == pytest.approx(40.0)
    assert s["status_counts"] == {"ok": 3, "wrong": 1, "skipped": 1}
    assert s["shapes"] == 5


def test_summary_without_any_speedup():
    s = bench_report.summarize([_row(1, 16, "bf16", 10.0, None)])
    assert s["geomean_speedup"] == {"bf16": None, "all": None}
    assert "bf16  -" in bench_report.format_summary(s)


def test_table_has_every_column_and_marks_bad_shapes():
    table = bench_report.format_table(ROWS).splitlines()
    header = table[0]
    for name in ("shape", "ours us", "triton us", "speed-up", "GB/s", "%copyBW", "TFLOP/s", "%mma", "status"):
        assert name in header
    assert "2.00x" in table[1] and "8.00x" in table[2]
    assert "1500" in table[1] and "50.0" in table[1] and "12.5" in table[1]
    assert "wrong" in table[4] and "WRONG vs reference" in table[4]
    assert table[4].split()[4] == "-"  # no time shown for the wrong kernel
    assert "skipped" in table[5] and "GB free" in table[5]
    # numbers end where their header ends
    assert table[1].index("2.00x") + len("2.00x") == header.index("speed-up") + len("speed-up")


def test_summary_text():
    text = bench_report.format_summary(bench_report.summarize(ROWS))
    assert "bf16  4.00x" in text and "fp8   1.00x" in text and "all   2.52x" in text
    assert "shapes: 5 (3 ok, 1 skipped, 1 wrong)" in text


def test_csv_round_trip(tmp_path):
    path = tmp_path / "r.csv"
    bench_report.write_csv(ROWS, str(path))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == bench_report.CSV_FIELDS
    assert len(rows) == 5
    assert float(rows[1]["speedup"]) == pytest.approx(8.0)
    assert rows[3]["status"] == "wrong" and rows[3]["ours_us"] == "" and rows[3]["triton_us"] == "30.0"


def test_json_is_strict_even_with_nan(tmp_path):
    path = tmp_path / "r.json"
    report = {"results": ROWS + [dict(ROWS[0], ours_vs_triton_max_abs=float("nan"))],
              "summary": bench_report.summarize(ROWS)}
    bench_report.write_json(report, str(path))
    text = path.read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert loaded["results"][-1]["ours_vs_triton_max_abs"] == "nan"
    assert loaded["summary"]["geomean_speedup"]["bf16"] == pytest.approx(4.0)


def test_plot_written_with_matplotlib(tmp_path):
    # matplotlib comes with the test extra: a missing one fails here, it does not skip.
    path = tmp_path / "r.png"
    written, message = bench_report.write_plot(ROWS, str(path), "test")
    assert written and str(path) in message
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_message_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    path = tmp_path / "r.png"
    written, message = bench_report.write_plot(ROWS, str(path), "test")
    assert not written and not path.exists()
    assert "matplotlib is not installed" in message


def test_output_paths_and_stem(tmp_path):
    stem = bench_report.file_stem("NVIDIA H100 80GB HBM3", "20261127T184200Z")
    assert stem == "mla_bench_nvidia-h100-80gb-hbm3_20261127T184200Z"
    paths = bench_report.output_paths(str(tmp_path / "new" / "dir"), stem)
    assert (tmp_path / "new" / "dir").is_dir()
    assert paths["png"].endswith(stem + ".png") and set(paths) == {"csv", "json", "png"}
