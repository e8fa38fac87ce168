"""Predictions of the segmentation network for one shard of a split (multi-scale + flip, dCRF with
``--crf``) into HDF5: ``mask`` and ``mask_crf`` (H, W) per image; ``--gallery N`` predicts only the
report gallery's images. ``--precision bf16|fp16`` (autocast) and ``--channels-last`` are recorded
in the file's params (nothing at the defaults).

What it computes, and why: `wsss_steps.methods.segmentation`.

Example::

    python -m wsss_steps.segment --model results/synth/segmentation/cam/cam/model.pt \
        --manifest results/synth/data/val.csv --out predictions.h5 --scales 0.75 1.0 1.25
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss_steps.cli import (
    add_run_arguments,
    add_shard_arguments,
    check_shard,
    start_run,
    step_parser,
)
from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import ImageRecord, read_manifest, spread_ids
from wsss_steps.methods.segmentation import DEFAULT_SCALES, STAGE, predict_image
from wsss_steps.networks.io import model_identity
from wsss_steps.networks.numerics import Numerics
from wsss_steps.networks.segmentation import load_segmentation
from wsss_steps.store.shards import write_map_shard

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    files = add_shard_arguments(parser, "output HDF5 file (a shard with --num-shards > 1)")
    files.add_argument("--model", required=True, type=Path, help="trained segmentation network (.pt)")
    files.add_argument("--gallery", type=int, metavar="N",
                       help="only the report gallery's N images of the manifest (spread over the split), "
                       "all into --out")
    parser.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES),
                        help="test scales (default: 0.5 0.75 1.0 1.25 1.5)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="(default: yes)")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                        help="also store the dCRF-refined prediction mask_crf (default: yes)")
    parser.add_argument("--method", default="", help="method name stored in the file (default: the model's)")
    add_run_arguments(parser, numerics=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_shard(args, "segment")
    if any(s <= 0 for s in args.scales):
        raise SystemExit(f"segment: scales must be > 0, not {args.scales}")
    if args.gallery is not None and (args.gallery < 1 or args.num_shards != 1):
        raise SystemExit("segment: --gallery needs N ≥ 1 and one shard")
    device = start_run(args)
    manifest = read_manifest(args.manifest)
    if args.gallery is not None:
        ids = set(spread_ids(manifest.ids, args.gallery))
        manifest = dataclasses.replace(manifest, records=[r for r in manifest.records if r.image_id in ids])
    model, meta = load_segmentation(args.model, device)
    numerics = Numerics.from_args(args)
    numerics.prepare(model)
    if tuple(meta.get("class_names", manifest.class_names)) != manifest.class_names:
        raise SystemExit(f"segment: {args.model} was trained on classes {meta['class_names']}, "
                         f"{args.manifest} has {list(manifest.class_names)}")

    def compute(record: ImageRecord) -> dict[str, np.ndarray]:
        try:
            image = read_image(record.image_path)
        except (OSError, ValueError) as error:
            raise SystemExit(f"segment: image {record.image_id!r}: {error}") from error
        return predict_image(model, image, device, args.scales, args.flip, args.crf, numerics)

    params = {"scales": list(args.scales), "flip": args.flip, "crf": args.crf,
              "model": model_identity(args.model, meta),
              "images": manifest.content_digest(), "crf_settings": "deeplab" if args.crf else None,
              **numerics.params()}
    count = write_map_shard(manifest, args.shard, args.num_shards, args.out, compute, stage=STAGE,
                            method=args.method or str(meta.get("name", "")) or "segmentation", params=params)
    log.info("wrote %s (%d images computed in this run)", args.out, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
