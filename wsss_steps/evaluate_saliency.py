"""Scores saliency maps (or a seeds file's foreground) against the ground truth's foreground:
foreground IoU over a threshold sweep, maxF (β² = 0.3) and MAE, and the pseudo-saliency masks'
foreground IoU; writes the curve and the ``saliency`` rows of results/summary.csv.

What it computes, and why: `wsss_steps.evaluation.saliency`.

Example::

    python -m wsss_steps.evaluate_saliency --manifest results/msrc/data/train.csv \\
        --maps results/msrc/saliency/c2am_h/maps.h5 --curve curve.csv --summary rows.csv
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.data.manifest import read_manifest
from wsss_steps.evaluation.masks import (
    open_for_manifest,
    read_ground_truth,
    threshold_list,
    write_rows_csv,
)
from wsss_steps.evaluation.saliency import SaliencyCounts, foreground_map
from wsss_steps.evaluation.summary import COLUMNS

log = logging.getLogger(__name__)

MASK_NAME = "saliency_mask"


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--manifest", required=True, type=Path, help="manifest CSV of the split")
    parser.add_argument("--maps", required=True, type=Path, help="saliency map file (or a seeds map file)")
    parser.add_argument("--map-name", default="saliency",
                        help="dataset scored: saliency (H, W), or cam (K, H, W) of seeds (default: %(default)s)")
    parser.add_argument("--thresholds", nargs=3, type=float, metavar=("START", "STOP", "STEP"),
                        default=(0.05, 0.95, 0.05), help="STOP included (default: 0.05 0.95 0.05)")
    parser.add_argument("--curve", required=True, type=Path, help="output CSV: one row per threshold")
    parser.add_argument("--summary", required=True, type=Path, help="output CSV: rows for results/summary.csv")
    parser.add_argument("--dataset", help="dataset name (default: the manifest's)")
    parser.add_argument("--stage", default="saliency", help="stage name (default: %(default)s)")
    parser.add_argument("--method", required=True, help="method name of the rows (the saliency entry)")
    parser.add_argument("--classifier", default="", help="classifier of the hint seeds, if any")
    parser.add_argument("--split", help="split name (default: the manifest's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    manifest = read_manifest(args.manifest)
    thresholds = threshold_list(*args.thresholds)
    counts = SaliencyCounts.empty(len(thresholds))
    mask_counts = SaliencyCounts.empty(1)
    with_masks = None
    with open_for_manifest(args.maps, manifest) as reader:
        for record in tqdm(manifest.records, desc="saliency", unit="img"):
            data = reader.read(record.image_id)
            if args.map_name not in data:
                raise SystemExit(f"evaluate_saliency: image {record.image_id!r} in {args.maps} has no dataset "
                                 f"{args.map_name!r} (it holds {sorted(data)})")
            truth = read_ground_truth(record, manifest.num_classes)
            counts.add(foreground_map(data[args.map_name]), truth, thresholds)
            if with_masks is None:
                with_masks = args.map_name == "saliency" and MASK_NAME in data
            if with_masks:
                mask_counts.add(np.asarray(data[MASK_NAME], dtype=np.float32), truth, [0.5])
    scores = counts.scores()
    write_rows_csv(args.curve, ["threshold", "fg_iou", "precision", "recall", "f_measure"],
           [[repr(t), *(repr(float(scores[k][i])) for k in ("iou", "precision", "recall", "f_measure"))]
            for i, t in enumerate(thresholds)])
    best = int(np.nanargmax(scores["iou"]))
    values = {"fg_iou": scores["iou"][best], "best_threshold": thresholds[best],
              "precision": scores["precision"][best], "recall": scores["recall"][best],
              "max_f_measure": float(np.nanmax(scores["f_measure"])), "mae": counts.mae(),
              "num_images": len(manifest.records)}
    if with_masks:
        values["mask_fg_iou"] = float(mask_counts.scores()["iou"][0])
    key = [args.dataset or manifest.dataset, args.stage, args.method, args.classifier, args.split or manifest.split]
    write_rows_csv(args.summary, COLUMNS, [[*key, name, repr(float(value))] for name, value in values.items()])
    log.info("%s: foreground IoU %.4f at %.2f, maxF %.4f, MAE %.4f%s", args.method, values["fg_iou"],
             values["best_threshold"], values["max_f_measure"], values["mae"],
             f", pseudo-saliency masks {values['mask_fg_iou']:.4f}" if with_masks else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
