"""Scores localisation maps as boxes (docs/methods.md §8; `wsss_steps.evaluation.wsol`): GT-known Loc,
Top-1 Loc, MaxBoxAcc, MaxBoxAccV2 and PxAP.

Protocol: the box threshold is chosen on the calibration images (``--calibration-maps`` over
``--calibration-manifest``: the best GT-known accuracy there) and applied to the evaluation images
(``--maps`` over ``--manifest``), where GT-known Loc (IoU ≥ 0.5 with a box of the image's class) and
Top-1 Loc (the same and the classifier's top-1 class right) are counted at it. ``--threshold V``
fixes it instead (the weight map's max/10: 0.1). MaxBoxAcc (IoU 0.5, the largest contour) and
MaxBoxAccV2 (mean over IoU 0.3/0.5/0.7, every contour) take the best threshold of the evaluation
images themselves, as wsolevaluation defines them; PxAP needs the evaluation images' masks.

A map is the image's class channel of ``cam`` (seeds files: CAM, AdvCAM) or ``weight_map``
(class-agnostic). An all-zero map gives the empty box (a miss), never an error.

Outputs: ``--summary`` (long-form rows, stage ``wsol``), ``--curve`` (per threshold: GT-known, Top-1
and the all-contour accuracies of both splits) and ``--boxes`` (per evaluation image: its predicted
box at the applied threshold, best IoU, hit, top-1 class; the report draws them).

Example::

    python -m wsss_steps.evaluate_wsol --maps results/msrc/wsol_evaluation/cam_softmax/cam/maps.h5 \\
        --manifest results/msrc/data/wsol/val.csv --calibration-maps .../wsol_calibration/.../maps.h5 \\
        --calibration-manifest results/msrc/data/wsol/train.csv --classifier .../model.pt \\
        --summary rows.csv --curve curve.csv --boxes boxes.csv --method cam --classifier-name cam_softmax
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss_steps.cli import add_run_arguments, start_run, step_parser
from wsss_steps.data.images import read_label_mask
from wsss_steps.data.manifest import ImageRecord, Manifest, read_manifest
from wsss_steps.evaluation.masks import open_for_manifest, write_rows_csv
from wsss_steps.evaluation.summary import COLUMNS
from wsss_steps.evaluation.wsol import (
    IOU_THRESHOLDS,
    WsolCounts,
    calibrated_threshold,
    threshold_index,
)
from wsss_steps.methods.boxes import box_iou, boxes_from_map, normalize_map
from wsss_steps.store.maps import MapReader

log = logging.getLogger("wsss_steps.evaluate_wsol")
MAP_NAMES = ("weight_map", "cam")
STAGE = "wsol"


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    files = parser.add_argument_group("files")
    files.add_argument("--maps", required=True, type=Path, help="maps of the evaluation images (.h5)")
    files.add_argument("--manifest", required=True, type=Path, help="the evaluation images (boxes, masks)")
    files.add_argument("--calibration-maps", type=Path, help="maps of the calibration images (.h5)")
    files.add_argument("--calibration-manifest", type=Path, help="the calibration images (boxes)")
    files.add_argument("--classifier", type=Path, help="the classifier whose top-1 class Top-1 Loc checks")
    files.add_argument("--summary", required=True, type=Path, help="long-form summary rows (CSV)")
    files.add_argument("--curve", type=Path, help="per-threshold accuracies (CSV)")
    files.add_argument("--boxes", type=Path, help="per evaluation image: box at the applied threshold (CSV)")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--threshold", default="calibrate",
                         help="'calibrate' (on the calibration images) or a fixed value in [0, 1) "
                         "(default: %(default)s)")
    naming = parser.add_argument_group("summary keys")
    naming.add_argument("--method", required=True, help="the map entry's name")
    naming.add_argument("--classifier-name", default="", help="the classifier entry's name")
    naming.add_argument("--dataset", default="", help="(default: the manifest's)")
    add_run_arguments(parser)
    return parser


def image_map(reader: MapReader, record: ImageRecord, path: Path) -> np.ndarray:
    """The map of ``record``'s class (or its class-agnostic weight map) in the file at ``path``."""
    data = reader.read(record.image_id)
    if "weight_map" in data:
        return np.asarray(data["weight_map"], dtype=np.float32)
    if "cam" not in data:
        raise SystemExit(f"evaluate_wsol: image {record.image_id!r} in {path} has none of {MAP_NAMES} "
                         f"(it holds {sorted(data)})")
    keys = [int(k) for k in np.asarray(data["keys"]).reshape(-1)]
    label = record.labels[0]
    if label not in keys:
        raise SystemExit(f"evaluate_wsol: image {record.image_id!r} in {path} has no map of its class {label}")
    return np.asarray(data["cam"][keys.index(label)], dtype=np.float32)


def ground_truth_boxes(record: ImageRecord) -> np.ndarray:
    if len(record.labels) != 1:
        raise SystemExit(f"evaluate_wsol: image {record.image_id!r} has {len(record.labels)} classes; WSOL "
                         "scores images of one class (the wsol_images step selects them)")
    boxes = [tuple(b)[1:] for b in record.boxes if b.label == record.labels[0]]
    if not boxes:
        raise SystemExit(f"evaluate_wsol: image {record.image_id!r} has no box of its class")
    return np.array(boxes, dtype=np.int64)


def count(manifest: Manifest, maps_path: Path, top1: np.ndarray | None, with_masks: bool, desc: str
          ) -> tuple[WsolCounts, list[np.ndarray]]:
    """The counts over a split and each image's normalised map (kept for the boxes file)."""
    counts = WsolCounts()
    maps = []
    with open_for_manifest(maps_path, manifest) as reader:
        for index, record in enumerate(tqdm(manifest.records, desc=desc, unit="img")):
            score_map = image_map(reader, record, maps_path)
            if score_map.shape != (record.height, record.width) and record.height:
                raise SystemExit(f"evaluate_wsol: the map of {record.image_id!r} in {maps_path} is "
                                 f"{score_map.shape}, the image {(record.height, record.width)}")
            mask = read_label_mask(record.mask_path) if with_masks and record.mask_path is not None else None
            counts.add(score_map, ground_truth_boxes(record), bool(top1[index]) if top1 is not None else True, mask)
            maps.append(normalize_map(score_map).astype(np.float32))
    return counts, maps


def top1_correct(classifier_path: Path, manifest: Manifest, device: object) -> np.ndarray:
    """Whether the classifier's top-1 class on each whole image is the image's class."""
    from wsss_steps.networks.io import load_classifier
    from wsss_steps.training.classification import ClassificationDataset, predict_logits

    model, meta = load_classifier(classifier_path, device)  # type: ignore[arg-type]
    if meta.get("class_names") not in (None, list(manifest.class_names)):
        raise SystemExit(f"evaluate_wsol: {classifier_path} was trained on other classes than {manifest.class_names}")
    logits = predict_logits(model, ClassificationDataset(manifest), device, batch_size=8)  # type: ignore[arg-type]
    return logits.argmax(axis=1) == np.array([r.labels[0] for r in manifest.records])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fixed = None
    if args.threshold != "calibrate":
        try:
            fixed = float(args.threshold)
        except ValueError:
            fixed = -1.0
        if not 0.0 <= fixed < 1.0:
            raise SystemExit(f"evaluate_wsol: --threshold must be 'calibrate' or a value in [0, 1), not {args.threshold!r}")
    elif args.calibration_maps is None or args.calibration_manifest is None:
        raise SystemExit("evaluate_wsol: --threshold calibrate needs --calibration-maps and --calibration-manifest")
    device = start_run(args)
    manifest = read_manifest(args.manifest)
    top1 = top1_correct(args.classifier, manifest, device) if args.classifier else None
    counts, maps = count(manifest, args.maps, top1, with_masks=True, desc="wsol evaluation")
    calibration = None
    if args.calibration_maps is not None and args.calibration_manifest is not None:
        calibration, _ = count(read_manifest(args.calibration_manifest), args.calibration_maps, None,
                               with_masks=False, desc="wsol calibration")
    threshold = fixed if fixed is not None else calibrated_threshold(calibration)  # type: ignore[arg-type]
    at = threshold_index(counts, threshold)
    values = {"gt_known_loc": counts.gt_known()[at], "maxboxacc": counts.max_box_acc(),
              "maxboxacc_v2": counts.max_box_acc_v2(), "pxap": counts.pxap(), "best_threshold": threshold,
              "num_images": counts.images}
    if top1 is not None:
        values.update(top1_loc=counts.top1()[at], top1_accuracy=float(np.mean(top1)))
    key = [args.dataset or manifest.dataset, STAGE, args.method, args.classifier_name, manifest.split]
    write_rows_csv(args.summary, COLUMNS, [[*key, name, repr(float(value))] for name, value in values.items()
                                           if math.isfinite(float(value))])
    if args.curve is not None:
        splits = [("evaluation", counts)] + ([("calibration", calibration)] if calibration is not None else [])
        header = ["split", "threshold", "gt_known", "top1"] + [f"box_acc_all_contours_{d:g}" for d in IOU_THRESHOLDS]
        rows = []
        for name, split_counts in splits:
            every = split_counts.box_accuracy_all_contours()
            for i, level in enumerate(split_counts.levels):
                rows.append([name, repr(float(level)), repr(float(split_counts.gt_known()[i])),
                             repr(float(split_counts.top1()[i])) if name == "evaluation" and top1 is not None else "",
                             *(repr(float(every[row, i])) for row in range(len(IOU_THRESHOLDS)))])
        write_rows_csv(args.curve, header, rows)
    if args.boxes is not None:
        rows = []
        for index, (record, normalized) in enumerate(zip(manifest.records, maps, strict=True)):
            box = boxes_from_map(normalized, [threshold])[0][0]
            iou = float(box_iou(box[None], ground_truth_boxes(record)).max())
            rows.append([record.image_id, *(int(v) for v in box), f"{iou:.4f}", int(iou >= 0.5),
                         "" if top1 is None else int(top1[index])])
        write_rows_csv(args.boxes, ["image_id", "x_min", "y_min", "x_max", "y_max", "iou", "hit", "top1_correct"],
                       rows)
    log.info("%s: GT-known %.4f%s at threshold %.2f, MaxBoxAcc %.4f, MaxBoxAccV2 %.4f, PxAP %s (%d images)",
             args.method, values["gt_known_loc"],
             f", Top-1 Loc {values['top1_loc']:.4f}" if "top1_loc" in values else "", threshold,
             values["maxboxacc"], values["maxboxacc_v2"],
             f"{values['pxap']:.4f}" if math.isfinite(values["pxap"]) else "–", counts.images)
    if counts.mask_images == 0:
        log.info("PxAP not computed: no ground-truth masks among the evaluation images (no pxap row)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
