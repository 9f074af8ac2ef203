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
    assert s["conditions"] == ["eager uniform"]  # rows that do not say are eager, uniform (older results)
    speedup = s["geomean_speedup"]["eager uniform"]
    assert speedup["bf16"] == pytest.approx(4.0)   # sqrt(2 * 8)
    assert speedup["fp8"] == pytest.approx(1.0)    # the wrong shape is left out
    assert speedup["all"] == pytest.approx((2 * 8 * 1) ** (1 / 3))
    assert s["geomean_pct_roofline"]["eager uniform"]["bf16"] == pytest.approx(40.0)
    assert s["status_counts"] == {"ok": 3, "wrong": 1, "skipped": 1}
    assert s["shapes"] == 5 and s["rows"] == 5


def test_summary_without_any_speedup():
    s = bench_report.summarize([_row(1, 16, "bf16", 10.0, None)])
    assert s["geomean_speedup"] == {"eager uniform": {"bf16": None, "all": None}}
    text = bench_report.format_summary(s)
    assert "eager uniform" in text and text.splitlines()[2].split()[-2:] == ["-", "-"]


def test_table_has_every_column_and_marks_bad_shapes():
    table = bench_report.format_table(ROWS).splitlines()
    header = table[0]
    for name in ("shape", "mode", "ours us", "triton us", "speed-up", "GB/s", "%copyBW", "TFLOP/s", "%mma",
                 "%roof", "err ours", "err trit", "comb%", "status"):
        assert name in header
    assert "2.00x" in table[1] and "8.00x" in table[2]
    assert "1500" in table[1] and "50.0" in table[1] and "12.5" in table[1]
    assert "wrong" in table[4] and "WRONG vs reference" in table[4]
    assert table[4].split()[4:7] == ["-", "-", "30.0"]  # no mode given; no time shown for the wrong kernel
    assert "skipped" in table[5] and "GB free" in table[5]
    # numbers end where their header ends
    assert table[1].index("2.00x") + len("2.00x") == header.index("speed-up") + len("speed-up")


def test_summary_text():
    text = bench_report.format_summary(bench_report.summarize(ROWS)).splitlines()
    assert text[1].split() == ["condition", "bf16", "fp8", "all"]
    assert text[2].split() == ["eager", "uniform", "4.00x", "1.00x", "2.52x"]
    assert text[-1] == "rows: 5 (3 ok, 1 skipped, 1 wrong) over 5 shapes"


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
    assert loaded["summary"]["geomean_speedup"]["eager uniform"]["bf16"] == pytest.approx(4.0)


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


def _mode_row(mode, batch, dtype, ours_us, triton_us, lengths="uniform", residency=False, **errors):
    row = _row(batch, 16, dtype, ours_us, triton_us)
    row.update(mode=mode, lengths=lengths, sm12x_residency=residency, **errors)
    if lengths == "ragged":
        row["label"] += " ragged"
    return row


def test_geomeans_are_per_mode_and_dtype_never_mixed():
    rows = [_mode_row("eager", 1, "bf16", 10.0, 20.0), _mode_row("graph", 1, "bf16", 10.0, 60.0),
            _mode_row("eager", 1, "fp8", 10.0, 15.0), _mode_row("graph", 1, "fp8", 10.0, 40.0)]
    s = bench_report.summarize(rows)
    assert s["conditions"] == ["eager uniform", "graph uniform"]
    assert s["geomean_speedup"]["eager uniform"] == pytest.approx({"bf16": 2.0, "fp8": 1.5, "all": 3 ** 0.5})
    assert s["geomean_speedup"]["graph uniform"] == pytest.approx({"bf16": 6.0, "fp8": 4.0, "all": 24 ** 0.5})
    assert s["shapes"] == 2 and s["rows"] == 4
    text = bench_report.format_summary(s).splitlines()
    assert text[2].split() == ["eager", "uniform", "2.00x", "1.50x", "1.73x"]
    assert text[3].split() == ["graph", "uniform", "6.00x", "4.00x", "4.90x"]


def test_lengths_and_residency_are_conditions_of_their_own():
    rows = [_mode_row("graph", 8, "bf16", 10.0, 20.0, lengths="ragged"),
            _mode_row("graph", 8, "bf16", 10.0, 30.0, residency=True),
            _mode_row("graph", 8, "bf16", 10.0, 40.0)]
    assert [bench_report.condition(r) for r in rows] == [
        "graph ragged", "graph uniform sm12x-residency", "graph uniform"]
    s = bench_report.summarize(rows)
    assert {c: v["bf16"] for c, v in s["geomean_speedup"].items()} == pytest.approx(
        {"graph ragged": 2.0, "graph uniform sm12x-residency": 3.0, "graph uniform": 4.0})


def test_accuracy_summary_ratio_of_ours_to_triton_per_dtype():
    rows = [
        _mode_row("graph", 1, "bf16", 10.0, 20.0, max_abs_ratio=0.5, mean_rel_ratio=1.0),
        _mode_row("graph", 8, "bf16", 10.0, 20.0, max_abs_ratio=2.0, mean_rel_ratio=4.0),
        _mode_row("graph", 32, "bf16", 10.0, 20.0, max_abs_ratio=None, mean_rel_ratio=None),  # no reference
        _mode_row("graph", 1, "fp8", None, 20.0, max_abs_ratio=8.0, mean_rel_ratio=6.0),  # wrong: still counted
        _mode_row("graph", 8, "fp8", 10.0, 20.0, max_abs_ratio=float("nan"), mean_rel_ratio=0.0),  # unusable
    ]
    rows[3]["status"] = "wrong"
    acc = bench_report.summarize(rows)["accuracy"]["graph uniform"]
    assert acc["bf16"]["shapes"] == 2
    assert acc["bf16"]["max_abs_ratio_geomean"] == pytest.approx(1.0)
    assert acc["bf16"]["max_abs_ratio_worst"] == 2.0 and acc["bf16"]["max_abs_ratio_worst_shape"] == "B8 H16 4k bf16"
    assert acc["bf16"]["mean_rel_ratio_geomean"] == pytest.approx(2.0) and acc["bf16"]["mean_rel_ratio_worst"] == 4.0
    assert acc["fp8"]["shapes"] == 1 and acc["fp8"]["max_abs_ratio_geomean"] == pytest.approx(8.0)
    text = bench_report.format_summary(bench_report.summarize(rows))
    assert ("graph uniform bf16 (2 shapes): max abs 1.00x (worst 2.00x, B8 H16 4k bf16); "
            "mean rel 2.00x (worst 4.00x, B8 H16 4k bf16)") in text


def test_accuracy_summary_without_reference_says_so():
    text = bench_report.format_summary(bench_report.summarize([_mode_row("eager", 1, "bf16", 1.0, 2.0)]))
    assert "no shape had both contenders compared with the reference" in text


def test_table_rows_name_their_mode_errors_and_combine_share():
    row = _mode_row("graph", 8, "bf16", 10.0, 20.0, ours_vs_reference_max_abs=0.0123,
                    triton_vs_reference_max_abs=0.0061, ours_combine_pct=23.4)
    row["note"] = "kernel times: 4 decode kernel events over 5 replays"
    line = bench_report.format_row(row)
    cells = line.split()
    assert cells[:5] == ["B8", "H16", "4k", "bf16", "graph"]
    assert "1.2e-02" in cells and "6.1e-03" in cells and "23" in cells
    assert line.endswith("ok  (kernel times: 4 decode kernel events over 5 replays)")  # notes of ok rows too


def test_csv_has_mode_lengths_and_accuracy_columns(tmp_path):
    for field in ("mode", "lengths", "max_model_len", "sm12x_residency", "ours_max_seq_len", "triton_num_kv_splits",
                  "seq_len_max", "seq_len_mean", "tokens", "ours_vs_reference_max_abs", "triton_vs_reference_mean_rel",
                  "max_abs_ratio", "mean_rel_ratio", "ours_replay_max_abs", "ours_decode_kernel_us",
                  "ours_combine_kernel_us", "ours_kernels_us", "ours_combine_pct"):
        assert field in bench_report.CSV_FIELDS
    path = tmp_path / "r.csv"
    bench_report.write_csv([_mode_row("graph", 8, "bf16", 10.0, 20.0, lengths="ragged")], str(path))
    (row,) = list(csv.DictReader(open(path)))
    assert row["mode"] == "graph" and row["lengths"] == "ragged" and row["label"].endswith(" ragged")


def test_plot_with_both_modes(tmp_path):
    rows = [_mode_row("eager", 1, "bf16", 10.0, 20.0), _mode_row("graph", 1, "bf16", 10.0, 60.0)]
    written, _ = bench_report.write_plot(rows, str(tmp_path / "m.png"), "modes")
    assert written and (tmp_path / "m.png").stat().st_size > 1000


def _part(dtype, speedups, device="NVIDIA H200"):
    rows = [_mode_row(mode, batch, dtype, 10.0, 10.0 * speedup)
            for batch, speedup in speedups for mode in ("eager", "graph")]
    return {"created": "2026-12-01T00:00:00Z", "device": {"name": device}, "copy_bandwidth": {"copy_bw_gbs": 4000.0},
            "mma_peak": {"mma_peak_tflops": 650.0}, "conditions": {"modes": ["eager", "graph"]},
            "options": {"dtype": dtype}, "elapsed_s": 100.0, "results": rows,
            "summary": bench_report.summarize(rows)}


def test_parts_of_a_run_merge_into_one_summary():
    merged = bench_report.merge_reports([_part("bf16", [(1, 2.0), (8, 8.0)]), _part("fp8", [(1, 1.0)])])
    assert len(merged["results"]) == 6 and merged["device"] == {"name": "NVIDIA H200"}
    speedup = merged["summary"]["geomean_speedup"]["graph uniform"]
    assert speedup["bf16"] == pytest.approx(4.0) and speedup["fp8"] == pytest.approx(1.0)
    assert speedup["all"] == pytest.approx(16 ** (1 / 3))  # over both parts
    assert [p["options"]["dtype"] for p in merged["parts"]] == ["bf16", "fp8"]
    assert merged["parts"][0]["rows"] == 4 and merged["parts"][0]["copy_bandwidth"]["copy_bw_gbs"] == 4000.0


def test_merging_refuses_other_gpus_and_repeated_shapes():
    with pytest.raises(ValueError, match="different GPUs"):
        bench_report.merge_reports([_part("bf16", [(1, 2.0)]), _part("fp8", [(1, 2.0)], device="NVIDIA H100")])
    with pytest.raises(ValueError, match="more than one part under the same condition"):
        bench_report.merge_reports([_part("bf16", [(1, 2.0)]), _part("bf16", [(1, 3.0)])])
    with pytest.raises(ValueError, match="nothing to merge"):
        bench_report.merge_reports([])


def test_merge_script_writes_csv_json_png(tmp_path):
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    paths = []
    for i, part in enumerate([_part("bf16", [(1, 2.0)]), _part("fp8", [(1, 3.0)])]):
        path = tmp_path / f"part{i}.json"
        bench_report.write_json(part, str(path))
        paths.append(str(path))
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "merge_results.py"), "--out-dir", str(out), *paths],
                          capture_output=True, text=True, timeout=300, cwd=str(repo))
    assert proc.returncode == 0, proc.stderr
    assert "graph uniform" in proc.stdout
    (merged_json,) = out.glob("mla_bench_nvidia-h200_*_merged.json")
    assert len(json.loads(merged_json.read_text())["results"]) == 4
    assert list(out.glob("*_merged.csv")) and list(out.glob("*_merged.png"))
    bad = subprocess.run([sys.executable, str(repo / "benchmarks" / "merge_results.py"), str(tmp_path / "none.json")],
                         capture_output=True, text=True, timeout=300, cwd=str(repo))
    assert bad.returncode == 2 and "merge_results:" in bad.stderr and "Traceback" not in bad.stderr
