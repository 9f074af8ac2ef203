"""The bench's outputs from its result rows: the text table, the summary, CSV, JSON and
the PNG plot (pure Python; matplotlib is optional and only needed for the plot).

A result row is a flat dict (see CSV_FIELDS), one per shape and mode; missing or None
values print as '-'. Every row names its mode ("eager" or "graph"), its lengths ("uniform"
or "ragged") and whether SM12x residency was emulated; the summary groups rows by those
three (condition()) so that no figure mixes them.
"""

from __future__ import annotations

import csv
import json
import math
import os

from mla_plugin.bench.roofline import geomean

# (header, row key, width, format spec, suffix) of the printed table; the shape is left-aligned
TABLE_COLUMNS = [
    ("shape", "label", 26, "", ""),
    ("mode", "mode", 5, "", ""),
    ("ours us", "ours_us", 9, ".1f", ""),
    ("triton us", "triton_us", 9, ".1f", ""),
    ("speed-up", "speedup", 8, ".2f", "x"),
    ("GB/s", "ours_gbs", 7, ".0f", ""),
    ("%copyBW", "ours_pct_copy_bw", 7, ".1f", ""),
    ("TFLOP/s", "ours_tflops", 7, ".1f", ""),
    ("%mma", "ours_pct_mma_peak", 6, ".1f", ""),
    ("%roof", "ours_pct_roofline", 6, ".1f", ""),
    ("err ours", "ours_vs_reference_max_abs", 8, ".1e", ""),
    ("err trit", "triton_vs_reference_max_abs", 8, ".1e", ""),
    ("comb%", "ours_combine_pct", 5, ".0f", ""),
    ("status", "status", 0, "", ""),
]

CSV_FIELDS = [
    "label", "batch", "heads", "context", "dtype", "page_size", "query_len", "lengths",
    "mode", "max_model_len", "sm12x_residency", "status", "note",
    "ours_us", "triton_us", "speedup",
    "seq_len_min", "seq_len_max", "seq_len_mean", "tokens", "ours_max_seq_len", "triton_num_kv_splits",
    "flops", "bytes", "memory_floor_us", "compute_floor_us", "bound",
    "ours_gbs", "ours_pct_copy_bw", "ours_tflops", "ours_pct_mma_peak", "ours_pct_roofline",
    "triton_gbs", "triton_pct_copy_bw", "triton_tflops", "triton_pct_mma_peak", "triton_pct_roofline",
    "ours_vs_triton_max_abs", "ours_vs_triton_mean_rel", "ours_vs_triton_lse_max_abs",
    "ours_vs_reference_max_abs", "ours_vs_reference_mean_rel", "ours_vs_reference_lse_max_abs",
    "triton_vs_reference_max_abs", "triton_vs_reference_mean_rel", "triton_vs_reference_lse_max_abs",
    "max_abs_ratio", "mean_rel_ratio", "ours_replay_max_abs", "triton_replay_max_abs",
    "ours_decode_kernel_us", "ours_combine_kernel_us", "ours_kernels_us", "ours_combine_pct",
    "ours_kernels_per_step",
]


def _cell(value, width: int, spec: str, suffix: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = "-"
    else:
        text = format(value, spec) + suffix
    return text.rjust(width) if spec else text.ljust(width)


def format_header() -> str:
    cells = [header.rjust(width) if spec else header.ljust(width)
             for header, _, width, spec, _ in TABLE_COLUMNS]
    return "  ".join(cells).rstrip()


def format_row(row: dict) -> str:
    cells = [_cell(row.get(key), width, spec, suffix) for _, key, width, spec, suffix in TABLE_COLUMNS]
    line = "  ".join(cells).rstrip()
    if row.get("note"):
        line += f"  ({row['note']})"
    return line


def format_table(rows: list[dict]) -> str:
    return "\n".join([format_header()] + [format_row(r) for r in rows])


def condition(row: dict) -> str:
    """What a row's figures were measured under: mode, lengths, and the residency emulation,
    e.g. 'graph uniform' or 'eager ragged sm12x-residency'."""
    parts = [row.get("mode") or "eager", row.get("lengths") or "uniform"]
    if row.get("sm12x_residency"):
        parts.append("sm12x-residency")
    return " ".join(parts)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def accuracy_summary(rows: list[dict]) -> dict:
    """Per dtype: ours / TRITON_MLA of the max abs and of the mean relative error against the
    fp32 reference, over the rows where both were compared with it: geo-mean, and the worst
    (largest) ratio with its shape. Rows where ours was wrong count too: accuracy is
    reported whatever the verdict."""
    summary = {}
    for dtype in sorted({r["dtype"] for r in rows}):
        entry = {}
        for measure in ("max_abs", "mean_rel"):
            pairs = [(r[f"{measure}_ratio"], r["label"]) for r in rows
                     if r["dtype"] == dtype and _positive(r.get(f"{measure}_ratio"))]
            worst = max(pairs) if pairs else (None, None)
            entry[f"{measure}_ratio_geomean"] = geomean(p[0] for p in pairs)
            entry[f"{measure}_ratio_worst"] = worst[0]
            entry[f"{measure}_ratio_worst_shape"] = worst[1]
            entry["shapes"] = max(entry.get("shapes", 0), len(pairs))
        summary[dtype] = entry
    return summary


def summarize(rows: list[dict]) -> dict:
    """Per condition (mode, lengths, residency): geo-mean speed-up (TRITON_MLA time / ours)
    per KV dtype and over all, over the shapes where both kernels were right and timed; geo-mean
    % of roofline of ours; the accuracy ratios. Also how many rows ended how."""
    conditions = list(dict.fromkeys(condition(r) for r in rows))
    summary = {"conditions": conditions, "geomean_speedup": {}, "geomean_pct_roofline": {}, "accuracy": {},
               "shapes": len({(r["label"], r.get("page_size")) for r in rows}), "rows": len(rows),
               "status_counts": {}}
    for cond in conditions:
        group = [r for r in rows if condition(r) == cond]
        timed = [r for r in group if r.get("speedup") is not None]
        dtypes = sorted({r["dtype"] for r in group})
        speedups = {d: geomean(r["speedup"] for r in timed if r["dtype"] == d) for d in dtypes}
        speedups["all"] = geomean(r["speedup"] for r in timed)
        roofline = {d: geomean(r["ours_pct_roofline"] for r in group if r["dtype"] == d and r.get("ours_pct_roofline"))
                    for d in dtypes}
        roofline["all"] = geomean(r["ours_pct_roofline"] for r in group if r.get("ours_pct_roofline"))
        summary["geomean_speedup"][cond] = speedups
        summary["geomean_pct_roofline"][cond] = roofline
        summary["accuracy"][cond] = accuracy_summary(group)
    for r in rows:
        status = r.get("status", "?")
        summary["status_counts"][status] = summary["status_counts"].get(status, 0) + 1
    return summary


def _condition_table(title: str, by_condition: dict, suffix: str) -> list[str]:
    columns = list(dict.fromkeys(k for values in by_condition.values() for k in values))
    columns = [c for c in columns if c != "all"] + ["all"]
    width = max([len("condition")] + [len(c) for c in by_condition])
    lines = [title, "  " + "condition".ljust(width) + "".join(c.rjust(9) for c in columns)]
    for cond, values in by_condition.items():
        cells = "".join(("-" if values.get(c) is None else f"{values[c]:.2f}{suffix}").rjust(9) for c in columns)
        lines.append("  " + cond.ljust(width) + cells)
    return lines


def format_summary(summary: dict) -> str:
    lines = _condition_table("geo-mean speed-up over TRITON_MLA (shapes where both were right and timed):",
                             summary["geomean_speedup"], "x")
    lines += _condition_table("geo-mean % of roofline (ours):", summary["geomean_pct_roofline"], "%")
    lines.append("accuracy against the fp32 reference, error of ours / error of TRITON_MLA "
                 "(geo-mean over shapes; worst ratio and its shape):")
    any_accuracy = False
    for cond, per_dtype in summary["accuracy"].items():
        for dtype, entry in per_dtype.items():
            if not entry.get("shapes"):
                continue
            any_accuracy = True
            parts = []
            for measure, name in (("max_abs", "max abs"), ("mean_rel", "mean rel")):
                g, w = entry[f"{measure}_ratio_geomean"], entry[f"{measure}_ratio_worst"]
                parts.append("-" if g is None else
                             f"{name} {g:.2f}x (worst {w:.2f}x, {entry[f'{measure}_ratio_worst_shape']})")
            lines.append(f"  {cond} {dtype} ({entry['shapes']} shapes): " + "; ".join(parts))
    if not any_accuracy:
        lines.append("  - (no shape had both contenders compared with the reference)")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["status_counts"].items()))
    lines.append(f"rows: {summary['rows']} ({counts}) over {summary['shapes']} shapes")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(_json_safe(report), f, indent=2, default=str, allow_nan=False)
        f.write("\n")


def _json_safe(value):
    """Strict JSON has no NaN/Inf (a NaN-producing kernel's error is one): write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_plot(rows: list[dict], path: str, title: str) -> tuple[bool, str]:
    """Speed-up and % of roofline per shape as a PNG. Returns (written, message); never
    raises for a missing matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display on a GPU server
        import matplotlib.pyplot as plt
    except ImportError:
        return False, "no plot: matplotlib is not installed (pip install matplotlib); CSV and JSON are written"
    if not rows:
        return False, "no plot: no results"

    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    labels = [f"{r['label']} {r.get('mode', '')}".rstrip() + ("" if r.get("status") == "ok" else f" [{r.get('status')}]")
              for r in rows]
    x = list(range(len(rows)))
    dtype_colors = {"bf16": "tab:blue", "fp8": "tab:orange"}
    fig, (ax_speed, ax_roof) = plt.subplots(2, 1, sharex=True, figsize=(max(8.0, 0.16 * len(rows) + 3), 8))

    # Bars from 1x on a log axis: up for faster than TRITON_MLA, down for slower.
    timed = [i for i, r in enumerate(rows) if r.get("speedup")]
    ax_speed.bar([x[i] for i in timed], [rows[i]["speedup"] - 1.0 for i in timed], bottom=1.0,
                 color=[dtype_colors.get(rows[i]["dtype"], "tab:gray") for i in timed])
    graph = [i for i in timed if rows[i].get("mode") == "graph"]
    if graph:  # graph-mode bars hatched over their colour
        ax_speed.bar([x[i] for i in graph], [rows[i]["speedup"] - 1.0 for i in graph], bottom=1.0,
                     color="none", hatch="//", edgecolor="black", linewidth=0.0)
    wrong = [i for i, r in enumerate(rows) if r.get("status") in ("wrong", "error", "triton-wrong")]
    ax_speed.plot([x[i] for i in wrong], [1.0] * len(wrong), "x", color="red", markersize=8)
    ax_speed.set_yscale("log")
    times_x = FuncFormatter(lambda value, _: f"{value:g}x")
    ax_speed.yaxis.set_major_formatter(times_x)
    ax_speed.yaxis.set_minor_formatter(times_x)
    ax_speed.axhline(1.0, color="black", linewidth=0.8)
    ax_speed.set_ylabel("speed-up over TRITON_MLA (x, log)")
    ax_speed.set_title(title)
    handles = [Patch(color=c, label=f"{d} cache") for d, c in dtype_colors.items()]
    if graph:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="graph mode"))
    if wrong:
        handles.append(ax_speed.plot([], [], "x", color="red", label="wrong / error: not timed")[0])
    ax_speed.legend(handles=handles, loc="best", fontsize=8)

    width = 0.4
    ours = [r.get("ours_pct_roofline") or 0.0 for r in rows]
    triton = [r.get("triton_pct_roofline") or 0.0 for r in rows]
    ax_roof.bar([i - width / 2 for i in x], ours, width, label="ours", color="tab:green")
    ax_roof.bar([i + width / 2 for i in x], triton, width, label="TRITON_MLA", color="tab:gray")
    ax_roof.axhline(100.0, color="black", linewidth=0.8)
    ax_roof.set_ylabel("% of roofline (max of memory, compute floor)")
    ax_roof.legend(loc="best", fontsize=8)
    ax_roof.set_xticks(x)
    ax_roof.set_xticklabels(labels, rotation=90, fontsize=7)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True, f"plot: {path}"


def output_paths(out_dir: str, stem: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    return {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("csv", "json", "png")}


def file_stem(device_name: str, timestamp: str) -> str:
    """'NVIDIA H100 80GB HBM3', '20261127T184200Z' -> 'mla_bench_nvidia-h100-80gb-hbm3_20261127T184200Z'."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in device_name.lower())
    slug = "-".join(part for part in slug.split("-") if part)
    return f"mla_bench_{slug}_{timestamp}"


def merge_reports(reports: list[dict]) -> dict:
    """One report from the JSON reports of a run made in parts (e.g. one per dtype or mode):
    every result row, a summary recomputed over all of them, and each part's own record
    (its copy bandwidth, mma peak, conditions, options, elapsed time) under "parts". The
    parts must come from one GPU model; each row keeps the %-figures its own part measured."""
    if not reports:
        raise ValueError("nothing to merge")
    names = {r.get("device", {}).get("name") for r in reports}
    if len(names) != 1:
        raise ValueError(f"the parts come from different GPUs ({', '.join(sorted(map(str, names)))}): "
                         f"merge one GPU's parts at a time")
    rows = [row for r in reports for row in r.get("results", [])]
    keys = [(row.get("label"), row.get("page_size"), condition(row)) for row in rows]
    repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"a shape is in more than one part under the same condition: {repeated[0]}")
    parts = [{k: r.get(k) for k in ("created", "device", "copy_bandwidth", "mma_peak", "contenders", "conditions",
                                     "method", "options", "elapsed_s")} | {"rows": len(r.get("results", []))}
             for r in reports]
    return {"tool": "python -m mla_plugin bench (parts merged)", "device": reports[0].get("device"),
            "parts": parts, "results": rows, "summary": summarize(rows)}
