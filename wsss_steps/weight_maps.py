"""Weight maps of one shard of a split into HDF5 (docs/methods.md §8): the generator g's map of every
image at its own size, ``weight_map`` (H, W) in (0, 1), class-agnostic (`evaluate_wsol` boxes it).
``--precision bf16|fp16`` (autocast; the map cast to float32) and ``--channels-last`` are recorded
in the file's params (nothing at the defaults).

Example::

    python -m wsss_steps.weight_maps --model results/msrc/weight_map/cam_softmax/weight_map/model.pt \\
        --manifest results/msrc/data/wsol/val.csv --out shard-0-of-1.h5
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy as np

from wsss_steps.cli import (
    add_run_arguments,
    add_shard_arguments,
    check_shard,
    start_run,
    step_parser,
)
from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import ImageRecord, read_manifest
from wsss_steps.methods.weight_map import predict_weight_map
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.io import model_identity
from wsss_steps.networks.numerics import Numerics
from wsss_steps.networks.weight_map import load_weight_map_generator
from wsss_steps.store.shards import write_map_shard

log = logging.getLogger(__name__)
STAGE = "weight_map"
MAP_NAME = "weight_map"


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    files = add_shard_arguments(parser, "output shard file (.h5); resumes its .partial")
    files.add_argument("--model", required=True, help="trained generator (train_weight_map)")
    parser.add_argument("--method", default="weight_map", help="entry name stored in the file (default: %(default)s)")
    add_run_arguments(parser, numerics=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_shard(args, "weight_maps")
    device = start_run(args)
    generator, meta = load_weight_map_generator(args.model, device)
    numerics = Numerics.from_args(args)
    numerics.prepare(generator)
    manifest = read_manifest(args.manifest)

    def compute(record: ImageRecord) -> dict[str, np.ndarray]:
        image = numerics.layout(image_to_tensor(read_image(record.image_path), device))
        with numerics.autocast(device):
            weights = predict_weight_map(generator, image[0])
        return {MAP_NAME: weights.astype(np.float32)}

    params = {"model": model_identity(args.model, meta), "images": manifest.content_digest(),
              "chosen_epoch": meta.get("chosen_epoch"), **numerics.params()}
    count = write_map_shard(manifest, args.shard, args.num_shards, args.out, compute, stage=STAGE,
                            method=args.method, params=params)
    log.info("wrote %s (%d images computed in this run)", args.out, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
