"""CAM seeds (method ``cam``): multi-scale + flip CAMs of one shard of a split, into HDF5.

Example::

    python -m wsss_steps.cam_seeds --classifier results/synth/classifier/cam/model.pt \\
        --manifest results/synth/data/train.csv --shard 0 --num-shards 2 --out shard-0-of-2.h5
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch

from wsss_steps.cams import multiscale_cams
from wsss_steps.datasets import ImageRecord, read_manifest
from wsss_steps.image_io import read_image
from wsss_steps.logs import setup_logging
from wsss_steps.networks.io import load_classifier
from wsss_steps.preprocess import image_to_tensor, resolve_device
from wsss_steps.seed_shards import write_seed_shard

log = logging.getLogger("wsss_steps.cam_seeds")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wsss_steps.cam_seeds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, help="trained classifier (model.pt)")
    parser.add_argument("--manifest", required=True, help="split manifest CSV written by prepare_data")
    parser.add_argument("--out", required=True, help="output shard file (.h5)")
    parser.add_argument("--shard", type=int, default=0, help="0-based shard index")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0])
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the horizontally flipped image")
    parser.add_argument("--method", default="cam", help="method name stored in the file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--log", help="log file (default: stderr only)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, meta = load_classifier(args.classifier, device)
    model.eval()
    manifest = read_manifest(args.manifest)
    if tuple(meta.get("class_names", manifest.class_names)) != manifest.class_names:
        raise ValueError(f"classifier {args.classifier} was trained on classes {meta['class_names']}, "
                         f"manifest {args.manifest} has {list(manifest.class_names)}")

    def compute(record: ImageRecord) -> dict:
        image = image_to_tensor(read_image(record.image_path), device)
        full, stride4 = multiscale_cams(model, image, record.labels, args.scales, args.flip)
        return {"cam": full, "cam_stride4": stride4}

    params = {"scales": args.scales, "flip": args.flip, "classifier": meta.get("settings_hash", "")}
    count = write_seed_shard(manifest, args.shard, args.num_shards, args.out, compute,
                             method=args.method, params=params)
    log.info("wrote %s (%d images computed in this run)", args.out, count)


if __name__ == "__main__":
    main()
