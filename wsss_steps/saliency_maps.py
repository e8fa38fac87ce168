"""Saliency maps of one shard of a split from a trained saliency network, into HDF5 (docs/methods.md §4).

Per image: ``saliency`` (H, W) float16 in [0, 1] and ``saliency_mask`` (H, W) uint8, the
pseudo-saliency mask (saliency > ``--mask-threshold`` (0.2), refined by a 2-label dCRF: 10
iterations, gt_prob 0.7). Inference at ``--scales`` with the horizontal flip; the C²AM networks
(c2am, c2am_h) give ReLU(logit of the salient side) summed over scales and flips, divided by its
max (the reference code's activation); the refinement network gives its sigmoid probability,
averaged. A killed shard resumes from its ``.partial`` file. ``--precision bf16|fp16`` (autocast;
the logits cast to float32 first) and ``--channels-last`` are recorded in the file's params
(nothing at the defaults).

Example::

    python -m wsss_steps.saliency_maps --model results/msrc/saliency/c2am_h/model.pt \\
        --manifest results/msrc/data/train.csv --shard 0 --num-shards 2 --out shard-0-of-2.h5
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss_steps.cli import (
    add_run_arguments,
    add_shard_arguments,
    check_shard,
    start_run,
    step_parser,
)
from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import ImageRecord, read_manifest
from wsss_steps.methods.cams import max_normalize, resize_batch
from wsss_steps.methods.crf import IRN_CRF
from wsss_steps.methods.saliency import PSEUDO_MASK_THRESHOLD, pseudo_saliency_mask
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.io import model_identity
from wsss_steps.networks.numerics import FP32, Numerics
from wsss_steps.networks.saliency import SaliencyNet, load_saliency
from wsss_steps.store.shards import write_map_shard

log = logging.getLogger(__name__)

STAGE = "saliency"


@torch.no_grad()
def multiscale_saliency(model: SaliencyNet, image: torch.Tensor, scales: Sequence[float] = (1.0,),
                        flip: bool = True, numerics: Numerics = FP32) -> np.ndarray:
    """The saliency map (H, W) float32 in [0, 1] of one normalised image (1, 3, H, W); the network
    runs under ``numerics`` (with ``channels_last``, converted by `Numerics.prepare`)."""
    height, width = image.shape[-2:]
    total = torch.zeros((height, width), device=image.device)
    count = 0
    for scale in scales:
        batch = resize_batch(image, scale)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with numerics.autocast(batch.device):
            logits = model.saliency_logits(numerics.layout(batch))
        logits = logits.float()
        maps = torch.sigmoid(logits) if model.head_name == "deeplabv3plus" else F.relu(logits)
        if flip:
            maps = torch.cat([maps[:1], maps[1:].flip(-1)])
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        total += maps.sum(dim=(0, 1))
        count += maps.shape[0]
    if model.head_name == "deeplabv3plus":
        return (total / count).clamp(0.0, 1.0).cpu().numpy()
    return max_normalize(total).cpu().numpy()


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    files = add_shard_arguments(parser, "output shard file (.h5); resumes its .partial")
    files.add_argument("--model", required=True, help="trained saliency network (train_saliency)")
    maps = parser.add_argument_group("maps")
    maps.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0],
                      help="inference scales (default: 1.0 0.5 1.5 2.0)")
    maps.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                      help="also the horizontal flip (default: yes)")
    maps.add_argument("--mask-threshold", type=float, default=PSEUDO_MASK_THRESHOLD,
                      help="pseudo-saliency masks: saliency above it is salient (default: %(default)s)")
    maps.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                      help="refine the pseudo-saliency masks with a 2-label dCRF (default: yes)")
    maps.add_argument("--crf-iterations", type=int, default=IRN_CRF.iterations)
    maps.add_argument("--crf-gt-prob", type=float, default=IRN_CRF.gt_prob)
    maps.add_argument("--method", default="", help="entry name stored in the file (default: the model's method)")
    add_run_arguments(parser, numerics=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_shard(args, "saliency_maps")
    if not args.scales or min(args.scales) <= 0:
        raise SystemExit(f"saliency_maps: --scales must be positive, not {args.scales}")
    if not 0.0 <= args.mask_threshold < 1.0:
        raise SystemExit(f"saliency_maps: --mask-threshold must lie in [0, 1), not {args.mask_threshold}")
    device = start_run(args)
    model, meta = load_saliency(args.model, device)
    numerics = Numerics.from_args(args)
    numerics.prepare(model)
    manifest = read_manifest(args.manifest)
    crf = dataclasses.replace(IRN_CRF, iterations=args.crf_iterations, gt_prob=args.crf_gt_prob) \
        if args.crf else None

    def compute(record: ImageRecord) -> dict[str, np.ndarray]:
        image = read_image(record.image_path)
        saliency = multiscale_saliency(model, image_to_tensor(image, device), args.scales, args.flip, numerics)
        mask = pseudo_saliency_mask(image, saliency, args.mask_threshold, crf)
        return {"saliency": saliency.astype(np.float16), "saliency_mask": mask}

    params = {"model": model_identity(args.model, meta), "images": manifest.content_digest(),
              "scales": list(args.scales), "flip": args.flip, "mask_threshold": args.mask_threshold,
              "crf": dataclasses.asdict(crf) if crf is not None else None, **numerics.params()}
    count = write_map_shard(manifest, args.shard, args.num_shards, args.out, compute, stage=STAGE,
                            method=args.method or str(meta.get("method", "")), params=params)
    log.info("wrote %s (%d images computed in this run)", args.out, count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
