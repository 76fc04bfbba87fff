"""`kws-train`: build a corpus, fit, evaluate and export models.

Each subcommand's arguments live here; the work lives in its own module, which is
imported only when that subcommand runs (the runtime never imports torch).
"""
from __future__ import annotations

import argparse
import importlib
import sys


def _synth_parser(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic call corpus in the seed's layout")
    p.set_defaults(module="train.synth")
    # The corpus issue fills in the options.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kws-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _synth_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args.module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("kws-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
