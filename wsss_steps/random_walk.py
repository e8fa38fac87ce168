"""IRN's random walk of one shard's seeds on the relation network's boundary map (docs/methods.md §5), into HDF5:
the walked scores ``cam`` (K, H, W) and ``pseudo_label`` at ``--sem-seg-bg-thres`` per image.

What it computes, and why: `wsss_steps.methods.random_walk`.

Example::

    python -m wsss_steps.random_walk --relation results/synth/relation/cam/cam/model.pt \
        --seeds results/synth/seeds/cam/cam/maps.h5 --manifest results/synth/data/train.csv \
        --shard 0 --num-shards 2 --out shard-0-of-2.h5
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
from wsss_steps.evaluation.masks import read_ground_truth
from wsss_steps.methods.labels import labels_at_threshold
from wsss_steps.methods.random_walk import (
    DTYPES,
    STAGE,
    ground_truth_boundary,
    propagate_seeds,
)
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.io import model_identity
from wsss_steps.networks.relation import (
    boundary_map,
    load_relation,
)
from wsss_steps.store.maps import MapReader
from wsss_steps.store.shards import write_map_shard

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    add_shard_arguments(parser, "output shard file (.h5)")
    parser.add_argument("--relation", help="trained relation network (train_relation's model.pt)")
    parser.add_argument("--boundary", choices=("relation", "ground-truth"), default="relation",
                        help="boundary map: the relation network's (default), or, as a diagnostic, one drawn "
                             "from the ground-truth masks (the ceiling of a perfect relation network)")
    parser.add_argument("--seeds", required=True, help="merged seed map file (cam_stride4 + keys per image)")
    parser.add_argument("--radius", type=int, default=5, help="pair radius of the walk (default: %(default)s)")
    parser.add_argument("--beta", type=float, default=10.0, help="affinity exponent (default: %(default)s)")
    parser.add_argument("--exp-times", type=int, default=8, help="2^exp_times steps (default: %(default)s)")
    parser.add_argument("--seed-power", type=float, default=1.0,
                        help="seeds raised to this power first (AdvCAM: 1.5; default: %(default)s)")
    parser.add_argument("--sem-seg-bg-thres", type=float, default=0.25,
                        help="background score of the stored pseudo labels (default: %(default)s)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="average the boundary logits of the image and its mirror (IRN; default: yes)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float64",
                        help="precision of the walk (default: %(default)s, exact and cheap)")
    parser.add_argument("--method", help="method name stored in the file (default: the seeds' method)")
    add_run_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_shard(args, "random_walk")
    if args.exp_times < 0 or args.radius < 2 or args.beta <= 0 or args.seed_power <= 0:
        raise SystemExit("random_walk: need --exp-times >= 0, --radius >= 2, --beta > 0, --seed-power > 0")
    if (args.boundary == "relation") != (args.relation is not None):
        raise SystemExit("random_walk: pass --relation, or --boundary ground-truth without it")
    device = start_run(args)
    dtype = DTYPES[args.dtype]
    manifest = read_manifest(args.manifest)
    if args.boundary == "relation":
        model, meta = load_relation(args.relation, device)
    else:
        model, meta = None, {"settings_hash": "ground-truth"}
        unmasked = [record.image_id for record in manifest.records if record.mask_path is None]
        if unmasked:
            raise SystemExit(f"random_walk: --boundary ground-truth needs masks; {args.manifest} has none for "
                             f"{len(unmasked)} images, e.g. {unmasked[0]!r}")
    if tuple(meta.get("class_names", manifest.class_names)) != manifest.class_names:
        raise ValueError(f"relation network {args.relation} was trained on classes {meta['class_names']}, "
                         f"manifest {args.manifest} has {list(manifest.class_names)}")
    seeds = MapReader(args.seeds)
    seeds.require(manifest.ids)

    def compute(record: ImageRecord) -> dict[str, np.ndarray]:
        data = seeds.read(record.image_id, ["cam_stride4", "keys"])
        if tuple(int(k) for k in data["keys"]) != tuple(record.labels):
            raise ValueError(f"image {record.image_id!r}: seed keys {data['keys'].tolist()} in {args.seeds} "
                             f"differ from its labels {list(record.labels)}")
        if model is None:
            mask = read_ground_truth(record, manifest.num_classes)
            height, width = mask.shape
            boundary = ground_truth_boundary(mask, data["cam_stride4"].shape[1:]).to(device)
        else:
            image = read_image(record.image_path)
            height, width = image.shape[:2]
            boundary = boundary_map(model, image_to_tensor(image, device), args.flip)
        if tuple(boundary.shape) != data["cam_stride4"].shape[1:]:
            raise ValueError(f"image {record.image_id!r}: boundary map {tuple(boundary.shape)} and seeds "
                             f"{data['cam_stride4'].shape[1:]} in {args.seeds} are not on one grid")
        scores = propagate_seeds(data["cam_stride4"], boundary, height, width, args.radius, args.beta,
                                 args.exp_times, args.seed_power, dtype)
        stored = scores.astype(np.float16)
        # Labels from the stored (rounded) scores: a sweep of the file at this threshold gives them.
        return {"cam": stored,
                "pseudo_label": labels_at_threshold(stored.astype(np.float32), data["keys"],
                                                    args.sem_seg_bg_thres),
                "boundary": boundary.cpu().numpy().astype(np.float16)}

    params = {"radius": args.radius, "beta": args.beta, "exp_times": args.exp_times,
              "seed_power": args.seed_power, "sem_seg_bg_thres": args.sem_seg_bg_thres, "flip": args.flip,
              "dtype": args.dtype, "relation": model_identity(args.relation, meta) if model is not None else "ground-truth",
              "seeds": {"method": str(seeds.attrs.get("method", "")), "params": seeds.params}}
    if model is None:
        params["boundary"] = args.boundary
    method = args.method or str(seeds.attrs.get("method", "")) or "irn"
    try:
        count = write_map_shard(manifest, args.shard, args.num_shards, args.out, compute, stage=STAGE,
                                method=method, params=params)
    finally:
        seeds.close()
    log.info("wrote %s (%d images computed in this run)", args.out, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
