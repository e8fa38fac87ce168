"""Pseudo masks of a split from the random walk's scores, refined by dCRF with ``--crf``, into HDF5
(``mask``, ``mask_onehot``) and, with ``--export-png``, VOC palette PNGs.

What it computes, and why: `wsss_steps.methods.pseudo_masks`. With ``--shard K --num-shards N`` it
writes shard K's masks only (the workflow's pseudo_masks_shard, without ``--export-png``): merge_maps
merges the shards and export_png writes the PNGs, the same files as one run over the split.

Example::

    python -m wsss_steps.pseudo_masks --maps results/synth/random_walk/cam/cam/maps.h5 \
        --manifest results/synth/data/train.csv --out masks.h5 --crf --export-png masks_png
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss_steps.cli import add_shard_arguments, check_shard, setup_logging, step_parser
from wsss_steps.data.images import read_image, write_label_mask
from wsss_steps.data.manifest import ImageRecord, read_manifest
from wsss_steps.methods.labels import labels_at_threshold
from wsss_steps.methods.pseudo_masks import PNOC_CRF, STAGE, one_hot, refine_mask
from wsss_steps.store.maps import MapReader
from wsss_steps.store.shards import write_map_shard

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    add_shard_arguments(parser, "output file (.h5; a shard file with --num-shards > 1)")
    parser.add_argument("--maps", required=True, help="merged random-walk map file (cam, keys, pseudo_label)")
    parser.add_argument("--threshold", type=float,
                        help="background threshold (default: the walk's sem_seg_bg_thres, its pseudo_label)")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=False,
                        help="refine each mask with dCRF (default: no)")
    parser.add_argument("--crf-iterations", type=int, default=PNOC_CRF.iterations, help="(default: %(default)s)")
    parser.add_argument("--crf-gt-prob", type=float, default=PNOC_CRF.gt_prob, help="(default: %(default)s)")
    parser.add_argument("--export-png", type=Path, metavar="DIR", help="also write DIR/<id>.png (VOC palette)")
    parser.add_argument("--method", help="method name stored in the file (default: the walk's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_shard(args, "pseudo_masks")
    setup_logging()
    crf = dataclasses.replace(PNOC_CRF, iterations=args.crf_iterations, gt_prob=args.crf_gt_prob) \
        if args.crf else None
    manifest = read_manifest(args.manifest)
    walk = MapReader(args.maps)
    walk.require(manifest.ids)
    threshold = args.threshold if args.threshold is not None else walk.params.get("sem_seg_bg_thres")
    if threshold is None:
        raise SystemExit(f"pseudo_masks: {args.maps} does not record sem_seg_bg_thres; pass --threshold")
    recompute = args.threshold is not None

    def compute(record: ImageRecord) -> dict[str, np.ndarray]:
        data = walk.read(record.image_id, ["cam", "keys"] if recompute else ["pseudo_label", "keys"])
        keys = data["keys"]
        mask = labels_at_threshold(np.asarray(data["cam"], np.float32), keys, threshold) if recompute \
            else np.asarray(data["pseudo_label"], dtype=np.uint8)
        if crf is not None:
            mask = refine_mask(read_image(record.image_path), mask, keys, crf)
        if args.export_png is not None:
            write_label_mask(args.export_png / f"{record.image_id}.png", mask)
        return {"mask": mask, "mask_onehot": one_hot(mask, keys)}

    params = {"threshold": threshold, "crf": dataclasses.asdict(crf) if crf is not None else None,
              "walk": walk.params}
    method = args.method or str(walk.attrs.get("method", "")) or "irn"
    try:
        count = write_map_shard(manifest, args.shard, args.num_shards, args.out, compute, stage=STAGE,
                                method=method, params=params)
    finally:
        walk.close()
    log.info("wrote %s (%d images computed in this run; threshold %s, %s)", args.out, count, threshold,
             "with dCRF" if crf is not None else "no dCRF")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
