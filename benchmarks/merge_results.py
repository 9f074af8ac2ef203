#!/usr/bin/env python3
"""Merge the JSON reports of a bench run made in parts (e.g. one `--dtype` per command, to fit
a per-command time limit) into one CSV, JSON and PNG with a summary over every part:

    python benchmarks/merge_results.py --out-dir benchmarks/results out/bench/mla_bench_*.json

Runs from a source checkout without installing: the repository root goes on sys.path.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mla_plugin.bench import report as bench_report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/merge_results.py", description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="JSON reports written by python -m mla_plugin bench")
    parser.add_argument("--out-dir", default=os.path.join("out", "bench"), help="where the merged files go")
    args = parser.parse_args(argv)
    try:
        reports = [json.load(open(path)) for path in args.reports]
        merged = bench_report.merge_reports(reports)
    except (OSError, ValueError) as exc:
        print(f"merge_results: {exc}", file=sys.stderr)
        return 2
    name = merged["device"]["name"]
    stem = bench_report.file_stem(name, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())) + "_merged"
    paths = bench_report.output_paths(args.out_dir, stem)
    bench_report.write_csv(merged["results"], paths["csv"])
    bench_report.write_json(merged, paths["json"])
    print(bench_report.format_summary(merged["summary"]))
    print(f"csv: {paths['csv']}")
    print(f"json: {paths['json']}")
    conditions = ", ".join(merged["summary"]["conditions"])
    print(bench_report.write_plot(merged["results"], paths["png"], f"MLA decode vs TRITON_MLA on {name}: {conditions}")[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
