"""Command line: python -m mla_plugin doctor | build | bench | tune.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``main(args) -> int``; this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "doctor": ("mla_plugin.doctor.cli", "check this machine can serve MLA_XQA_SM120"),
    "build": ("mla_plugin.build", "build the decode kernel ahead of time"),
    "bench": ("mla_plugin.bench.cli", "time the decode kernel against TRITON_MLA"),
    "tune": ("mla_plugin.tune", "regenerate this GPU's split-KV tuning table"),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mla_plugin")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
