"""Figures and tables of the HTML report, one subcommand each: ``table``, ``sweep``,
``precision-recall``, ``per-class``, ``gallery``, ``wsol-boxes``.

What it computes, and why: `wsss_steps.report.figures`.

Example::

    python -m wsss_steps.report_figures table --summary results/summary.csv --out stages.html
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.report.figures import (
    plot_per_class,
    plot_precision_recall,
    plot_sweep,
    render_gallery,
    render_table,
    render_wsol_boxes,
)

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="stage-by-stage mIoU table (HTML)")
    table.add_argument("--summary", required=True, type=Path, help="results/summary.csv")
    table.add_argument("--dataset", help="only this dataset's rows (a run with several datasets)")
    table.add_argument("--out", required=True, type=Path)
    sweep = commands.add_parser("sweep", help="mIoU against the background threshold (PNG)")
    sweep.add_argument("--curve", required=True, nargs="+", metavar="STAGE=CSV", help="curve.csv per stage")
    sweep.add_argument("--title", default="")
    sweep.add_argument("--out", required=True, type=Path)
    curves = commands.add_parser("precision-recall", help="the seeds' precision against recall (PNG)")
    curves.add_argument("--curve", required=True, nargs="+", metavar="METHOD=CSV", help="curve.csv per seed method")
    curves.add_argument("--title", default="")
    curves.add_argument("--out", required=True, type=Path)
    per_class = commands.add_parser("per-class", help="per-class IoU bars (PNG)")
    per_class.add_argument("--per-class", required=True, nargs="+", metavar="STAGE=CSV", help="per_class.csv per stage")
    per_class.add_argument("--title", default="")
    per_class.add_argument("--out", required=True, type=Path)
    gallery = commands.add_parser("gallery", help="overlays of every stage on a few images (PNG)")
    gallery.add_argument("--manifest", required=True, type=Path, help="split manifest (the seeds' split)")
    gallery.add_argument("--predictions", required=True, type=Path,
                         help="the segmentation network's masks of the gallery images (segment --gallery)")
    gallery.add_argument("--seeds", type=Path, help="seed map file of the split")
    gallery.add_argument("--seeds-rows", type=Path, help="the seeds' summary rows (their best threshold)")
    gallery.add_argument("--pseudo-masks", type=Path, help="pseudo-mask file of the split")
    gallery.add_argument("--count", type=int, default=6, help="images shown (default: %(default)s)")
    gallery.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True)
    gallery.add_argument("--out", required=True, type=Path)
    wsol = commands.add_parser("wsol-boxes", help="WSOL maps with ground-truth and predicted boxes (PNG)")
    wsol.add_argument("--manifest", required=True, type=Path, help="the WSOL evaluation images")
    wsol.add_argument("--boxes", required=True, nargs="+", metavar="NAME=CSV", help="evaluate_wsol --boxes files")
    wsol.add_argument("--maps", required=True, nargs="+", metavar="NAME=H5", help="the same experiments' maps")
    wsol.add_argument("--count", type=int, default=6, help="images shown (default: %(default)s)")
    wsol.add_argument("--out", required=True, type=Path)
    return parser


def split_pairs(pairs: Sequence[str], option: str) -> list[tuple[str, Path]]:
    """``NAME=PATH`` arguments of ``option`` as (name, path) pairs, in order."""
    out = []
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"report_figures: {option} takes NAME=PATH, not {pair!r}")
        out.append((name, Path(path)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command == "table":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_table(args.summary, args.dataset))
    elif args.command == "sweep":
        plot_sweep(split_pairs(args.curve, "--curve"), args.out, args.title)
    elif args.command == "precision-recall":
        plot_precision_recall(split_pairs(args.curve, "--curve"), args.out, args.title)
    elif args.command == "per-class":
        plot_per_class(split_pairs(args.per_class, "--per-class"), args.out, args.title)
    elif args.command == "wsol-boxes":
        boxes, maps = split_pairs(args.boxes, "--boxes"), split_pairs(args.maps, "--maps")
        if [name for name, _ in boxes] != [name for name, _ in maps]:
            raise SystemExit("report_figures wsol-boxes: --boxes and --maps must name the same experiments in order")
        render_wsol_boxes(args.manifest, boxes, maps, args.out, max(1, args.count))
    else:
        if args.count < 1:
            raise SystemExit(f"report_figures: --count must be ≥ 1, not {args.count}")
        render_gallery(args.manifest, args.predictions, args.out, args.count, args.seeds, args.seeds_rows,
                       args.pseudo_masks, args.crf)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
