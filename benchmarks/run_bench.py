#!/usr/bin/env python3
"""Thin script for `python -m mla_plugin bench` (same options; see --help).

Runs from a source checkout without installing: the repository root goes on sys.path.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mla_plugin.bench import cli as bench  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run_bench.py",
                                     description="time the MLA decode kernel against TRITON_MLA")
    bench.add_arguments(parser)
    return bench.main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
