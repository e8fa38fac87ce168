"""IRN's random walk from the relation network's boundary map, computed exactly without the dense
transition matrix (METHODS §5); library and step.

What IRN computes (``misc/indexing.py`` ``propagate_to_edge`` and ``step/make_sem_seg_labels.py``),
on the stride-4 grid of N = h·w pixels:

- affinities a_ij = 1 − max of B on the segment i–j for the pairs within ``radius`` 5 (the
  half-plane directions of `wsss_steps.networks.relation.search_directions`); A = I + S + Sᵀ with
  S the pair affinities: symmetric, 1 on the diagonal, 0 beyond the radius;
- A^β element-wise (β = 10), then ``A / A.sum(dim=0)``: each column sums to 1, T = A^β D⁻¹;
- T is squared ``exp_times`` (8) times: T^(2^8) = T^256, a dense N × N matrix;
- the seeds ``cam_stride4`` (K, h, w) (AdvCAM first raises them to the power 1.5) are multiplied by
  (1 − B), and the row vectors x (K, N) are propagated: rw = x · T^256;
- rw is upsampled ×4 (bilinear, align_corners=False), cropped to the image, divided by its max
  over all classes and pixels (one global max, not one per class), padded with a background
  score ``sem_seg_bg_thres`` (0.25) as channel 0 **after** the walk, and argmaxed; the argmax
  indexes ``[0, keys + 1]``.

Since A is symmetric, x · (A^β D⁻¹)^n = ((D⁻¹ A^β)^n xᵀ)ᵀ: the walk applies the row-stochastic
matrix P = D⁻¹ A^β (each pixel's new score is the A^β-weighted mean of its neighbours' scores) to
the K score columns n = 2^exp_times times. P has at most 69 non-zeros per row at radius 5 (the
pixel, 34 directions and their mirrors), so 256 sparse products (torch CSR) give T^256's result
in O(256 · 69 · N · K) operations and O(69 · N) memory, instead of the dense version's
8 · 2N³ operations and N² memory (0.55 GB in float32 for a 500 × 375 image, N = 11,750).
`dense_random_walk` is that dense reference, kept for tests and the benchmark.

Background padding. The issue text says IRN pads the background before the walk; IRN's code
(and AdvCAM's and P-NOC's copies, and METHODS §5's wording) pads it afterwards, on the normalised,
upsampled scores; that is what is done here. The walk therefore moves the K class channels only,
and the stored ``cam`` maps (K, H, W) (scores / global max) can be swept over background
thresholds by `wsss_steps.evaluate_seeds` as seeds are.

Step output per image: ``cam`` (K, H, W) float16 (propagated scores / global max), ``keys``,
``pseudo_label`` (H, W) uint8 at ``--sem-seg-bg-thres`` (mask numbering), ``boundary`` (h, w)
float16 (the relation network's B, for inspection). ``--boundary ground-truth`` (no
``--relation``) walks on a boundary drawn from the ground-truth masks instead: the ceiling a perfect
relation network would reach from the same seeds (README, "Pseudo masks"); a diagnostic only.

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
import torch

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.data.manifest import ImageRecord, read_manifest
from wsss_steps.evaluation.masks import read_ground_truth
from wsss_steps.methods.labels import labels_at_threshold
from wsss_steps.methods.random_walk import (
    DTYPES,
    STAGE,
    ground_truth_boundary,
    propagate_seeds,
)
from wsss_steps.networks.inputs import image_to_tensor, resolve_device
from wsss_steps.networks.relation import (
    boundary_map,
    load_relation,
)
from wsss_steps.store.images import read_image
from wsss_steps.store.maps import MapReader
from wsss_steps.store.shards import write_map_shard

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--relation", help="trained relation network (train_relation's model.pt)")
    parser.add_argument("--boundary", choices=("relation", "ground-truth"), default="relation",
                        help="boundary map: the relation network's (default), or, as a diagnostic, one drawn "
                             "from the ground-truth masks (the ceiling of a perfect relation network)")
    parser.add_argument("--seeds", required=True, help="merged seed map file (cam_stride4 + keys per image)")
    parser.add_argument("--manifest", required=True, help="split manifest CSV written by prepare_data")
    parser.add_argument("--out", required=True, help="output shard file (.h5)")
    parser.add_argument("--shard", type=int, default=0, help="0-based shard index")
    parser.add_argument("--num-shards", type=int, default=1)
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
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    if args.exp_times < 0 or args.radius < 2 or args.beta <= 0 or args.seed_power <= 0:
        raise SystemExit("random_walk: need --exp-times >= 0, --radius >= 2, --beta > 0, --seed-power > 0")
    if (args.boundary == "relation") != (args.relation is not None):
        raise SystemExit("random_walk: pass --relation, or --boundary ground-truth without it")
    device = resolve_device(args.device)
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
              "dtype": args.dtype, "relation": meta.get("settings_hash", ""),
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
