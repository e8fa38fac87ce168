"""Scores a split's masks against its ground-truth masks (mIoU, per-class IoU, precision, recall):
a background-threshold sweep of seed or walk scores (``--map-name cam``, optionally with dCRF),
seeds with a saliency background (``--saliency-background``), or fixed label maps such as pseudo
masks or a segmentation network's predictions (``--label-map``). Writes the curve, per-class
scores at the best threshold and the rows of results/summary.csv. (Saliency maps as foreground
masks: `evaluate_saliency`; localisation boxes: `evaluate_wsol`.)

What it computes, and why: `wsss_steps.evaluation.masks`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.data.manifest import read_manifest
from wsss_steps.evaluation.masks import (
    DEFAULT_THRESHOLDS,
    evaluate_label_maps,
    evaluate_saliency_background,
    evaluate_seeds,
    threshold_list,
    write_outputs,
)
from wsss_steps.store.maps import MapReader

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--manifest", required=True, type=Path, help="manifest CSV of the split (classes.txt beside it)")
    parser.add_argument("--maps", required=True, type=Path, help="merged seed map file (HDF5)")
    parser.add_argument("--map-name", default="cam", help="dataset of each image group to evaluate (default: cam)")
    parser.add_argument("--thresholds", nargs=3, type=float, metavar=("START", "STOP", "STEP"),
                        default=DEFAULT_THRESHOLDS, help="background thresholds, STOP included (default: 0.05 0.80 0.05)")
    parser.add_argument("--crf", action="store_true", help="refine each label map with dCRF (IRN settings) before scoring")
    parser.add_argument("--crf-thresholds", nargs=3, type=float, metavar=("START", "STOP", "STEP"),
                        help="thresholds for the CRF sweep (default: those of --thresholds)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the CRF (default: 1)")
    parser.add_argument("--label-map", action="store_true",
                        help="--map-name is a fixed label map (H, W) in mask numbering (e.g. a segmentation "
                        "network's prediction): scored as it is, no threshold sweep")
    parser.add_argument("--saliency-background", action="store_true",
                        help="seeds with a saliency background (P-NOC's scoring of saliency): each pixel's "
                        "background score is 1 − its 'saliency' in the same file; no threshold sweep")
    parser.add_argument("--curve", type=Path, help="output CSV: one row per threshold (required without --label-map)")
    parser.add_argument("--per-class", required=True, type=Path, help="output CSV: per-class scores at the best threshold")
    parser.add_argument("--summary", required=True, type=Path, help="output CSV: rows for results/summary.csv")
    parser.add_argument("--dataset", help="dataset name (default: the manifest's)")
    parser.add_argument("--stage", help="stage name (default: seeds, or seeds_crf with --crf)")
    parser.add_argument("--method", help="seed method (default: the map file's 'method' attribute)")
    parser.add_argument("--classifier", default="", help="classifier variant the seeds come from")
    parser.add_argument("--split", help="split name (default: the manifest's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    if args.label_map and args.saliency_background:
        raise SystemExit("--label-map and --saliency-background exclude each other")
    if args.label_map and args.crf:
        raise SystemExit("--label-map scores fixed label maps: refine them before (no --crf)")
    if args.curve is None and not args.label_map:
        raise SystemExit("--curve is required without --label-map")
    manifest = read_manifest(args.manifest)
    spec = args.crf_thresholds if (args.crf and args.crf_thresholds) else args.thresholds
    thresholds = threshold_list(*spec)
    method = args.method
    if method is None:
        with MapReader(args.maps) as reader:
            method = str(reader.attrs.get("method", ""))
        if not method:
            raise SystemExit(f"--method not given and {args.maps} has no 'method' attribute")
    identity = {"dataset": args.dataset or manifest.dataset,
                "stage": args.stage or ("seeds_crf" if args.crf else "seeds"),
                "method": method, "classifier": args.classifier, "split": args.split or manifest.split}
    if args.saliency_background:
        log.info("evaluating %s/%s of %s with the saliency as background%s", args.maps, args.map_name,
                 args.manifest, " and CRF" if args.crf else "")
        confusion = evaluate_saliency_background(manifest, args.maps, args.map_name, crf=args.crf)
        result = write_outputs(confusion, None, manifest.class_names, identity, args.curve, args.per_class,
                               args.summary, len(manifest.records))
        log.info("mIoU %.4f", result["miou"])
        return 0
    if args.label_map:
        log.info("evaluating the label maps %s/%s of %s: %d images", args.maps, args.map_name, args.manifest,
                 len(manifest.records))
        confusion = evaluate_label_maps(manifest, args.maps, args.map_name)
        result = write_outputs(confusion, None, manifest.class_names, identity, args.curve, args.per_class,
                               args.summary, len(manifest.records))
        log.info("mIoU %.4f", result["miou"])
        return 0
    log.info("evaluating %s/%s of %s: %d images, %d thresholds%s", args.maps, args.map_name,
             args.manifest, len(manifest.records), len(thresholds), " with CRF" if args.crf else "")
    confusions = evaluate_seeds(manifest, args.maps, args.map_name, thresholds, crf=args.crf,
                                workers=args.workers)
    result = write_outputs(confusions, thresholds, manifest.class_names, identity, args.curve,
                           args.per_class, args.summary, len(manifest.records))
    log.info("best threshold %.2f: mIoU %.4f", result["best_threshold"], result["miou"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
