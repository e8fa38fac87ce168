"""Trains a class-agnostic saliency network (docs/methods.md §4; `wsss_steps.methods.saliency`).

Methods (``--method``):

- ``c2am``: C²AM, unsupervised: the foreground/background contrastive loss with the rank
  weighting over each batch; the polarity is fixed after training over the training images (the
  reference code's border check) and stored in the model file;
- ``c2am_h``: C²AM-H, plus the hint loss on the pixels where the seeds of ``--hints`` (a seeds
  map file) are ≥ ``--hint-threshold`` (0.4; 0.3 on COCO);
- ``refined``: the refinement network (PoolNet's role): DeepLabV3+ with one output trained with
  BCE on the pseudo-saliency masks (``saliency_mask``) of another entry's map file (``--masks``).

The batch of the contrastive loss is ``--batch-size`` images; ``--accumulation-steps`` sums the
gradients of that many batches into one optimiser step (P-NOC: 64 × 2). SGD (momentum 0 as the
reference C²AM code), weight decay, poly decay (power 0.9). Augmentation: random long side in
``--resize-long``, flip, random crop ``--crop`` (the hints and masks travel along, nearest
neighbour; at the C²AM logit grid the hints are sampled nearest-neighbour). Determinism,
checkpoints and resume as every training step (`wsss_steps.training.loop`).

Example::

    python -m wsss_steps.train_saliency --method c2am_h --manifest results/msrc/data/train.csv \\
        --hints results/msrc/seeds/lite0/cam/maps.h5 --out saliency.pt --epochs 10 --crop 224
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wsss_steps.cli import (
    add_checkpoint_arguments,
    add_run_arguments,
    check_checkpoint,
    loop_settings,
    start_run,
    step_parser,
)
from wsss_steps.data.images import IGNORE_LABEL
from wsss_steps.data.manifest import Manifest, read_manifest
from wsss_steps.methods.saliency import (
    HINT_SMOOTHING,
    HINT_THRESHOLD,
    HINT_WEIGHT,
    RANK_ALPHA,
    contrastive_loss,
    hint_loss,
    needs_polarity_flip,
)
from wsss_steps.networks.backbones import BACKBONES, OUTPUT_STRIDES
from wsss_steps.networks.saliency import build_saliency_net, save_saliency
from wsss_steps.store.digests import file_digest
from wsss_steps.training.augment import TrainAugmentation
from wsss_steps.training.loop import Trainee, set_bn_frozen, train
from wsss_steps.training.saliency import HintSource, border_fractions
from wsss_steps.training.schedules import POLY_POWER
from wsss_steps.training.segmentation import LabelSource, MaskSource, SegmentationDataset

log = logging.getLogger("wsss_steps.train_saliency")

METHODS = ("c2am", "c2am_h", "refined")
MASK_NAME = "saliency_mask"
# Per method: the loss terms of C²AM (and the hint term of C²AM-H) beside the total.
METRIC_COLUMNS = {"c2am": ("epoch", "step", "lr", "loss", "fg_pull", "push", "bg_pull", "seconds"),
                  "c2am_h": ("epoch", "step", "lr", "loss", "fg_pull", "push", "bg_pull", "hint", "seconds"),
                  "refined": ("epoch", "step", "lr", "loss", "seconds")}


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    io = parser.add_argument_group("files")
    io.add_argument("--manifest", required=True, type=Path, help="training split manifest CSV")
    io.add_argument("--hints", type=Path, help="seeds map file (c2am_h): 'cam' (K, H, W) per image")
    io.add_argument("--masks", type=Path, help="saliency map file with 'saliency_mask' per image (refined)")
    io.add_argument("--out", required=True, type=Path, help="the trained network (.pt)")
    io.add_argument("--metrics", type=Path, help="CSV with one row per epoch")
    net = parser.add_argument_group("network")
    net.add_argument("--method", required=True, choices=METHODS, help="c2am, c2am_h or refined")
    net.add_argument("--backbone", choices=BACKBONES, default="resnet50", help="(default: %(default)s)")
    net.add_argument("--backbone-weights", type=Path, help="local ImageNet state-dict file (resnets)")
    net.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                     help="ImageNet init of the backbone (default: yes)")
    net.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES, default=16, help="(default: %(default)s)")
    net.add_argument("--head-kernel", type=int, choices=(1, 3), default=3,
                     help="C²AM head convolution: 3 (reference code) or 1 (docs/methods.md §4) (default: %(default)s)")
    net.add_argument("--width", type=int, default=256, help="refined: DeepLabV3+ channels (default: %(default)s)")
    net.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                     help="keep the backbone's BatchNorm statistics fixed (default: no)")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--rank-alpha", type=float, default=RANK_ALPHA, help="α of the rank weights (default: %(default)s)")
    loss.add_argument("--hint-threshold", type=float, default=HINT_THRESHOLD,
                      help="δ_fg: hints where the seed ≥ it (default: %(default)s; COCO 0.3)")
    loss.add_argument("--hint-smoothing", type=float, default=HINT_SMOOTHING,
                      help="label smoothing of the hint targets (default: %(default)s)")
    loss.add_argument("--hint-weight", type=float, default=HINT_WEIGHT, help="λ_h (default: %(default)s)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=64,
                       help="images per batch: the contrastive loss's n (default: %(default)s)")
    train.add_argument("--accumulation-steps", type=int, default=2,
                       help="batches summed into one optimiser step (default: %(default)s)")
    train.add_argument("--lr", type=float, default=1e-3, help="(default: %(default)s)")
    train.add_argument("--head-lr-mult", type=float, default=1.0, help="(default: %(default)s)")
    train.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: %(default)s)")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="(default: %(default)s)")
    train.add_argument("--resize-long", type=int, nargs=2, metavar=("MIN", "MAX"), default=(448, 448),
                       help="random long side (default: 448 448)")
    train.add_argument("--crop", type=int, default=448, help="square crop (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0, help="seeds the init, epoch order and augmentation")
    train.add_argument("--cache-images", action=argparse.BooleanOptionalAction, default=False,
                       help="keep decoded images (and hints or masks) in memory (default: no)")
    add_checkpoint_arguments(parser)
    run = add_run_arguments(parser, training=True)
    run.add_argument("--name", default="", help="entry name stored in the model")
    run.add_argument("--dataset", default="", help="dataset name (default: from the manifest)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    problems = check_checkpoint(args)
    if args.method == "c2am_h" and args.hints is None:
        problems.append("--method c2am_h needs --hints (a seeds map file)")
    if args.method != "c2am_h" and args.hints is not None:
        problems.append(f"--hints is read by --method c2am_h only, not {args.method}")
    if args.method == "refined" and args.masks is None:
        problems.append("--method refined needs --masks (a saliency map file with saliency_mask)")
    if args.method != "refined" and args.masks is not None:
        problems.append(f"--masks is read by --method refined only, not {args.method}")
    for name in ("epochs", "batch_size", "accumulation_steps", "crop", "width"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be ≥ 1, not {getattr(args, name)}")
    if args.method != "refined" and args.batch_size < 2:
        problems.append(f"--batch-size must be ≥ 2 for the contrastive loss, not {args.batch_size}")
    if not 0.0 <= args.hint_threshold <= 1.0:
        problems.append(f"--hint-threshold must lie in [0, 1], not {args.hint_threshold}")
    if not 0.0 <= args.hint_smoothing < 1.0:
        problems.append(f"--hint-smoothing must lie in [0, 1), not {args.hint_smoothing}")
    if not 1 <= args.resize_long[0] <= args.resize_long[1]:
        problems.append(f"--resize-long needs 1 ≤ MIN ≤ MAX, not {args.resize_long}")
    if args.seed < 0:
        problems.append(f"--seed must be ≥ 0, not {args.seed}")
    if problems:
        raise SystemExit("train_saliency: " + "; ".join(problems))


def training_settings(args: argparse.Namespace, manifest: Manifest) -> dict[str, Any]:
    """Everything that shapes the trained weights (not output paths, device or threads)."""
    settings: dict[str, Any] = {
        "kind": "saliency", "method": args.method, "backbone": args.backbone, "pretrained": bool(args.pretrained),
        "backbone_weights": str(args.backbone_weights) if args.pretrained and args.backbone_weights else None,
        "output_stride": args.output_stride, "freeze_bn": bool(args.freeze_bn), "epochs": args.epochs,
        "batch_size": args.batch_size, "accumulation_steps": args.accumulation_steps, "lr": args.lr,
        "head_lr_mult": args.head_lr_mult, "momentum": args.momentum, "weight_decay": args.weight_decay,
        "poly_power": POLY_POWER, "resize_long": list(args.resize_long), "crop": args.crop, "seed": args.seed,
        "train_digest": manifest.content_digest(),
    }
    if args.method == "refined":
        settings.update(masks=file_digest(args.masks), width=args.width)
    else:
        settings.update(head_kernel=args.head_kernel, rank_alpha=args.rank_alpha)
    if args.method == "c2am_h":
        settings.update(hints=file_digest(args.hints), hint_threshold=args.hint_threshold,
                        hint_smoothing=args.hint_smoothing, hint_weight=args.hint_weight)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    device = start_run(args)
    manifest = read_manifest(args.manifest, args.dataset)
    settings = training_settings(args, manifest)
    labels: LabelSource
    if args.method == "refined":
        labels = MaskSource(manifest, args.masks, mask_name=MASK_NAME, num_labels=2)
    else:
        labels = HintSource(manifest, args.hints, args.hint_threshold)

    torch.manual_seed(args.seed)
    head = "deeplabv3plus" if args.method == "refined" else "c2am"
    model = build_saliency_net(head, args.backbone, args.output_stride, args.head_kernel, args.pretrained,
                               args.backbone_weights, width=args.width).to(device)
    backbone_params, head_params = model.parameter_groups()
    base_lrs = [args.lr, args.lr * args.head_lr_mult]
    optimizer = torch.optim.SGD([{"params": backbone_params, "lr": base_lrs[0]},
                                 {"params": head_params, "lr": base_lrs[1]}],
                                lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    augmentation = TrainAugmentation(tuple(args.resize_long), args.crop, flip=True)
    dataset = SegmentationDataset(manifest, labels, augmentation, args.seed, args.cache_images)
    log.info("training %s saliency on %s: %d images, batch %d × %d accumulation, %d epochs, device %s",
             args.method, args.backbone, len(dataset), args.batch_size, args.accumulation_steps, args.epochs,
             device)

    def train_mode() -> None:
        model.train()
        if args.freeze_bn:
            set_bn_frozen(model.backbone)

    def step(batch: tuple[torch.Tensor, torch.Tensor], global_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        logits, features = model(images)
        if args.method == "refined":
            valid = targets != IGNORE_LABEL
            if not bool(valid.any()):
                return logits.sum() * 0.0, {}
            return F.binary_cross_entropy_with_logits(logits[:, 0][valid], targets[valid].float()), {}
        assert features is not None
        loss, parts = contrastive_loss(features, torch.sigmoid(logits), args.rank_alpha)
        if args.method == "c2am_h":
            hints = F.interpolate(targets[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0]
            term = hint_loss(logits, hints.long(), args.hint_smoothing)
            loss = loss + args.hint_weight * term
            parts["hint"] = float(term.detach())
        return loss, parts

    trainee = Trainee(model, optimizer, base_lrs, dataset, step, train_mode=train_mode)
    plan = loop_settings(args, "train_saliency", device, settings, METRIC_COLUMNS[args.method],
                         accumulation_steps=args.accumulation_steps)
    outcome = train(trainee, plan)
    if not outcome.finished:
        return 0
    meta: dict[str, Any] = {"method": args.method, "dataset": args.dataset or manifest.dataset,
                            "name": args.name, "training": settings, "settings_hash": outcome.settings_hash,
                            "epochs_trained": args.epochs}
    if args.method != "refined":
        fractions = border_fractions(model, manifest, device)
        model.flip_polarity = needs_polarity_flip(fractions)
        meta["border_foreground_fraction"] = float(fractions.mean())
        log.info("polarity: border foreground fraction %.3f over %d training images → %s", fractions.mean(),
                 fractions.size, "saliency = 1 − P" if model.flip_polarity else "saliency = P")
    save_saliency(args.out, model.cpu().eval(), meta)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
