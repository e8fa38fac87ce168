"""Seeds with a saliency background: a seeds file's maps and a saliency entry's maps in one file.

Each image keeps the seeds' ``cam``, ``cam_stride4`` and ``keys`` as they are and gains
``saliency`` (H, W): the saliency file's ``--saliency-map``, its pseudo-saliency mask
``saliency_mask`` (0/1; P-NOC evaluates C²AM-H by its dCRF-refined binary masks) or its map
``saliency`` (P-NOC's choice for the refinement network's output). Downstream this file is a seeds entry like any other, with two differences
the workflow passes on: its evaluation takes 1 − saliency as each pixel's background score
(`wsss_steps.evaluate_masks --saliency-background`, P-NOC's way of scoring saliency), and its affinity
labels follow P-NOC's saliency-aware rule (`wsss_steps.affinity_labels --saliency`, this file).
The random walk propagates the same seeds.

Example::

    python -m wsss_steps.saliency_seeds --manifest results/msrc/data/train.csv \\
        --seeds results/msrc/seeds/lite0/cam/maps.h5 --saliency results/msrc/saliency/c2am_h/maps.h5 \\
        --out results/msrc/seeds/lite0/cam_c2am_h/maps.h5 --method cam_c2am_h
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy as np

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.data.manifest import ImageRecord, read_manifest
from wsss_steps.store.maps import MapReader
from wsss_steps.store.shards import write_map_shard

log = logging.getLogger(__name__)

SEED_ARRAYS = ("cam", "cam_stride4")
SALIENCY_MAPS = ("saliency_mask", "saliency")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--manifest", required=True, help="the seed split's manifest")
    parser.add_argument("--seeds", required=True, help="merged seeds map file")
    parser.add_argument("--saliency", required=True, help="merged saliency map file")
    parser.add_argument("--out", required=True, help="output map file (.h5)")
    parser.add_argument("--method", required=True, help="seeds entry name stored in the file")
    parser.add_argument("--saliency-map", choices=SALIENCY_MAPS, default="saliency_mask",
                        help="the saliency file's dataset taken as saliency (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    manifest = read_manifest(args.manifest)
    with MapReader(args.seeds) as seeds, MapReader(args.saliency) as saliency:
        seeds.require(manifest.ids)
        saliency.require(manifest.ids)

        def compute(record: ImageRecord) -> dict[str, np.ndarray]:
            data = seeds.read(record.image_id, [*SEED_ARRAYS, "keys"])
            if tuple(int(k) for k in data["keys"]) != tuple(record.labels):
                raise ValueError(f"image {record.image_id!r}: seed keys {data['keys'].tolist()} in {args.seeds} "
                                 f"differ from its labels {list(record.labels)}")
            sal = saliency.read(record.image_id, [args.saliency_map])[args.saliency_map].astype(np.float16)
            if sal.shape != data["cam"].shape[1:]:
                raise ValueError(f"image {record.image_id!r}: saliency in {args.saliency} is {sal.shape}, "
                                 f"the seeds in {args.seeds} are {data['cam'].shape[1:]}")
            return {**{name: data[name] for name in SEED_ARRAYS}, "saliency": sal}

        params = {"seeds": {"method": str(seeds.attrs.get("method", "")), "params": seeds.params},
                  "saliency": {"method": str(saliency.attrs.get("method", "")), "params": saliency.params,
                               "map": args.saliency_map}}
        count = write_map_shard(manifest, 0, 1, args.out, compute, stage="seeds", method=args.method,
                                params=params, desc="seeds with saliency")
    log.info("wrote %s (%d images)", args.out, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
