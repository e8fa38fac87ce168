"""Affinity labels of one shard of a split from its seeds (IRN's two thresholds, or P-NOC's
saliency-aware rule with ``--saliency``), into HDF5: ``affinity_label`` (H, W) per image.

What it computes, and why: `wsss_steps.methods.affinity`.

Example::

    python -m wsss_steps.affinity_labels --seeds results/synth/seeds/cam/cam/maps.h5 \
        --manifest results/synth/data/train.csv --shard 0 --num-shards 2 --out shard-0-of-2.h5
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from wsss_steps.cli import add_shard_arguments, check_shard, setup_logging, step_parser
from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import ImageRecord, read_manifest
from wsss_steps.methods.affinity import STAGE, saliency_labels, two_threshold_labels
from wsss_steps.methods.crf import IRN_CRF
from wsss_steps.store.maps import MapReader
from wsss_steps.store.shards import write_map_shard

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    add_shard_arguments(parser, "output shard file (.h5)")
    parser.add_argument("--seeds", required=True, help="merged seed map file (cam + keys per image)")
    parser.add_argument("--map-name", default="cam", help="seed dataset to read (default: %(default)s)")
    parser.add_argument("--conf-fg", type=float, default=0.30,
                        help="background score of the fg labels (IRN 0.30, AdvCAM 0.35; default: %(default)s)")
    parser.add_argument("--conf-bg", type=float, default=0.05,
                        help="background score of the bg labels (IRN 0.05, AdvCAM 0.15; default: %(default)s)")
    parser.add_argument("--saliency", help="saliency map file (groups with 'saliency'): P-NOC's rule")
    parser.add_argument("--sal-bg-threshold", type=float, default=0.10,
                        help="saliency at or below it is background (default: %(default)s)")
    parser.add_argument("--sal-fg-threshold", type=float, default=0.40,
                        help="seed score a salient pixel needs for a class (default: %(default)s)")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                        help="refine with dCRF (docs/methods.md §5 settings; default: yes)")
    parser.add_argument("--crf-iterations", type=int, default=IRN_CRF.iterations)
    parser.add_argument("--crf-gt-prob", type=float, default=IRN_CRF.gt_prob)
    parser.add_argument("--method", help="method name stored in the file (default: irn or pnoc_saliency)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_shard(args, "affinity_labels")
    setup_logging()
    if not 0 <= args.conf_bg <= args.conf_fg:
        raise SystemExit(f"affinity_labels: need 0 <= --conf-bg <= --conf-fg, got {args.conf_bg}, {args.conf_fg}")
    crf = dataclasses.replace(IRN_CRF, iterations=args.crf_iterations, gt_prob=args.crf_gt_prob) \
        if args.crf else None
    manifest = read_manifest(args.manifest)
    seeds = MapReader(args.seeds)
    saliency = MapReader(args.saliency) if args.saliency else None
    seeds.require(manifest.ids)
    if saliency is not None:
        saliency.require(manifest.ids)

    def compute(record: ImageRecord) -> dict[str, np.ndarray]:
        data = seeds.read(record.image_id, [args.map_name, "keys"])
        if tuple(int(k) for k in data["keys"]) != tuple(record.labels):
            raise ValueError(f"image {record.image_id!r}: seed keys {data['keys'].tolist()} in {args.seeds} "
                             f"differ from its labels {list(record.labels)}")
        image = read_image(record.image_path)
        if saliency is None:
            label = two_threshold_labels(image, data[args.map_name], data["keys"], args.conf_fg,
                                         args.conf_bg, crf)
        else:
            sal = saliency.read(record.image_id, ["saliency"])["saliency"]
            label = saliency_labels(image, data[args.map_name], data["keys"], sal, args.sal_bg_threshold,
                                    args.sal_fg_threshold, crf)
        return {"affinity_label": label}

    method = args.method or ("irn" if saliency is None else "pnoc_saliency")
    params = {"seeds": {"path_params": seeds.params, "method": str(seeds.attrs.get("method", "")),
                        "map_name": args.map_name},
              "crf": dataclasses.asdict(crf) if crf is not None else None}
    if saliency is None:
        params.update(conf_fg=args.conf_fg, conf_bg=args.conf_bg)
    else:
        params.update(sal_bg_threshold=args.sal_bg_threshold, sal_fg_threshold=args.sal_fg_threshold,
                      saliency=saliency.params)
    try:
        count = write_map_shard(manifest, args.shard, args.num_shards, args.out, compute, stage=STAGE,
                                method=method, params=params)
    finally:
        seeds.close()
        if saliency is not None:
            saliency.close()
    log.info("wrote %s (%d images computed in this run)", args.out, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
