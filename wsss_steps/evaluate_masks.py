"""Scores a split's masks against its ground-truth masks (mIoU, per-class IoU, precision, recall):
a background-threshold sweep of seed or walk scores (``--map-name cam``, optionally with dCRF),
seeds with a saliency background (``--saliency-background``), or fixed label maps such as pseudo
masks or a segmentation network's predictions (``--label-map``). Writes the curve, per-class
scores at the best threshold and the rows of results/summary.csv. (Saliency maps as foreground
masks: `evaluate_saliency`; localisation boxes: `evaluate_wsol`.)

Sharded: ``--shard K --num-shards N --confusions FILE.npz`` scores shard K of the manifest's images
(the inference stages' shards) and saves its confusion matrices; ``--merge FILE.npz ...`` sums the
N shard files and writes the same outputs as the unsharded scoring.

What it computes, and why: `wsss_steps.evaluation.masks`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss_steps.cli import check_shard, setup_logging, step_parser
from wsss_steps.data.manifest import Manifest, read_manifest
from wsss_steps.evaluation.masks import (
    DEFAULT_THRESHOLDS,
    evaluate_label_maps,
    evaluate_saliency_background,
    evaluate_seeds,
    merge_confusion_shards,
    shard_manifest,
    threshold_list,
    write_confusion_shard,
    write_outputs,
)
from wsss_steps.store.maps import MapReader

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--manifest", required=True, type=Path, help="manifest CSV of the split (classes.txt beside it)")
    parser.add_argument("--maps", type=Path, help="merged seed map file (HDF5; required without --merge)")
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
    parser.add_argument("--shard", type=int, default=0, help="0-based shard index (default: %(default)s)")
    parser.add_argument("--num-shards", type=int, default=1, help="(default: %(default)s)")
    parser.add_argument("--confusions", type=Path,
                        help="output .npz: this shard's confusion matrices (for --merge) instead of the CSVs")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="SHARD",
                        help="sum these --confusions files (shards 0..N-1 of the manifest) and write the CSVs")
    parser.add_argument("--curve", type=Path,
                        help="output CSV: one row per threshold (required without --label-map or --confusions)")
    parser.add_argument("--per-class", type=Path,
                        help="output CSV: per-class scores at the best threshold (required without --confusions)")
    parser.add_argument("--summary", type=Path,
                        help="output CSV: rows for results/summary.csv (required without --confusions)")
    parser.add_argument("--dataset", help="dataset name (default: the manifest's)")
    parser.add_argument("--stage", help="stage name (default: seeds, or seeds_crf with --crf)")
    parser.add_argument("--method", help="seed method (default: the map file's 'method' attribute)")
    parser.add_argument("--classifier", default="", help="classifier variant the seeds come from")
    parser.add_argument("--split", help="split name (default: the manifest's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    check_shard(args, "evaluate_masks")
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    if args.label_map and args.saliency_background:
        raise SystemExit("--label-map and --saliency-background exclude each other")
    if args.label_map and args.crf:
        raise SystemExit("--label-map scores fixed label maps: refine them before (no --crf)")
    if args.merge and (args.maps or args.confusions or args.num_shards > 1):
        raise SystemExit("--merge reads shard files: no --maps, --confusions or --num-shards")
    if not args.merge and args.maps is None:
        raise SystemExit("--maps is required without --merge")
    if args.num_shards > 1 and args.confusions is None:
        raise SystemExit("a shard (--num-shards > 1) writes --confusions, merged by --merge")
    if args.confusions is None:
        if args.per_class is None or args.summary is None:
            raise SystemExit("--per-class and --summary are required without --confusions")
        if args.curve is None and not args.label_map:
            raise SystemExit("--curve is required without --label-map")
    manifest = read_manifest(args.manifest)
    if args.merge:
        if args.method is None:
            raise SystemExit("--merge needs --method (there is no map file to read it from)")
        confusions, thresholds, num_images = merge_confusion_shards(args.merge, manifest)
        log.info("merged %d shard files of %s: %d images", len(args.merge), args.manifest, num_images)
        return _write(args, manifest, confusions, thresholds, args.method, num_images)
    if args.confusions is not None:
        part = shard_manifest(manifest, args.shard, args.num_shards)
        confusions, thresholds = _score(args, part)
        write_confusion_shard(args.confusions, confusions, thresholds, part, args.shard, args.num_shards)
        log.info("wrote %s (shard %d of %d: %d images)", args.confusions, args.shard, args.num_shards,
                 len(part.records))
        return 0
    method = args.method
    if method is None:  # before the scoring: a missing name fails in seconds, not after the sweep
        with MapReader(args.maps) as reader:
            method = str(reader.attrs.get("method", ""))
        if not method:
            raise SystemExit(f"--method not given and {args.maps} has no 'method' attribute")
    confusions, thresholds = _score(args, manifest)
    return _write(args, manifest, confusions, thresholds, method, len(manifest.records))


def _score(args: argparse.Namespace, manifest: Manifest) -> tuple[np.ndarray, list[float] | None]:
    """The summed confusion matrices of the manifest's images, and the thresholds (None: unswept)."""
    if args.saliency_background:
        log.info("evaluating %s/%s of %s with the saliency as background%s", args.maps, args.map_name,
                 args.manifest, " and CRF" if args.crf else "")
        return evaluate_saliency_background(manifest, args.maps, args.map_name, crf=args.crf), None
    if args.label_map:
        log.info("evaluating the label maps %s/%s of %s: %d images", args.maps, args.map_name, args.manifest,
                 len(manifest.records))
        return evaluate_label_maps(manifest, args.maps, args.map_name), None
    spec = args.crf_thresholds if (args.crf and args.crf_thresholds) else args.thresholds
    thresholds = threshold_list(*spec)
    log.info("evaluating %s/%s of %s: %d images, %d thresholds%s", args.maps, args.map_name,
             args.manifest, len(manifest.records), len(thresholds), " with CRF" if args.crf else "")
    confusions = evaluate_seeds(manifest, args.maps, args.map_name, thresholds, crf=args.crf,
                                workers=args.workers)
    return confusions, thresholds


def _write(args: argparse.Namespace, manifest: Manifest, confusions: np.ndarray,
           thresholds: list[float] | None, method: str, num_images: int) -> int:
    identity = {"dataset": args.dataset or manifest.dataset,
                "stage": args.stage or ("seeds_crf" if args.crf else "seeds"),
                "method": method, "classifier": args.classifier, "split": args.split or manifest.split}
    result = write_outputs(confusions, thresholds, manifest.class_names, identity, args.curve, args.per_class,
                           args.summary, num_images)
    if thresholds is None:
        log.info("mIoU %.4f", result["miou"])
    else:
        log.info("best threshold %.2f: mIoU %.4f", result["best_threshold"], result["miou"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
