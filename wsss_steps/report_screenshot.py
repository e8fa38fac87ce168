"""Screenshots of the Snakemake HTML report in headless Chromium (a check that it renders).

What it computes, and why: `wsss_steps.report.screenshot`.

Example::

    python -m wsss_steps.report_screenshot results/report.html --out results/screenshots \
        landing stages=results/synth/report/stages.html
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from wsss_steps.cli import step_parser
from wsss_steps.report.screenshot import screenshot

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("report", type=Path, help="the report (.html)")
    parser.add_argument("views", nargs="+", help="'landing' or NAME=RESULT")
    parser.add_argument("--out", required=True, type=Path, help="folder for NAME.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1400, 1000), metavar=("W", "H"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for view in args.views:
        name, _, result = view.partition("=")
        print(screenshot(args.report, args.out / f"{name}.png", result or None, tuple(args.size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
