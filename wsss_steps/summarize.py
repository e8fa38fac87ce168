"""Concatenates the long-form rows of every evaluation into results/summary.csv (duplicates and
non-numbers are errors naming the files).

What it computes, and why: `wsss_steps.evaluation.summary`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.evaluation.summary import summarize

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--out", required=True, type=Path, help="output CSV (e.g. results/summary.csv)")
    parser.add_argument("rows", nargs="+", type=Path, help="row files written by the evaluation steps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    count = summarize(args.rows, args.out)
    log.info("wrote %d rows from %d file(s) to %s", count, len(args.rows), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
