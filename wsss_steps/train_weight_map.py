"""Trains the weight-map generator g (docs/methods.md §8; `wsss_steps.methods.weight_map`) against a frozen
f and keeps the epoch the early-stopping score S chooses.

Method I (``--method i``, the default): f is the classifier; loss CE(f(I), f(I ⊙ g(I))) +
λ‖g(I)‖₁ (λ = ``--l1-weight``, 1 in the paper). Method II (``--method ii``): f is first trained
with a triplet loss (margin ``--margin``, 1) for ``--embedding-epochs`` on anchor / positive /
negative images, from the classifier's backbone (an L2-normalised pooled embedding; its checkpoints
in ``<checkpoint-dir>/embedding``), then frozen; g is trained with L_inner + L_outer + λR. g is saved every epoch
(``epoch-NNN.pt`` in ``--checkpoint-dir``, required); after each epoch the maps of the
``--val-manifest`` images give S (label-free) and, where those images have boxes, the GT-known
accuracy of the paper's box (max/10, largest contour), a diagnostic that is never used for the
choice. ``--out`` is the generator of the epoch with the highest mean S; its metadata records every
epoch's scores and the chosen epoch. The training loops: `wsss_steps.training.weight_map`.

The method notes (docs/methods.md) give no optimiser for g: Adam (lr 1e-4, poly decay) is this project's choice, as is the
encoder (EfficientNet-Lite0, ImageNet; the paper's ResNet is not in this environment offline).

Example::

    python -m wsss_steps.train_weight_map --classifier results/msrc/classifier/cam_softmax/model.pt \\
        --manifest results/msrc/data/wsol/train.csv --val-manifest results/msrc/data/wsol/val.csv \\
        --out model.pt --metrics metrics.csv --checkpoint-dir checkpoints --epochs 10
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsss_steps.cli import (
    add_checkpoint_arguments,
    add_run_arguments,
    check_checkpoint,
    loop_settings,
    start_run,
    step_parser,
)
from wsss_steps.data.manifest import Manifest, read_manifest
from wsss_steps.methods.weight_map import BOX_FRACTION, TRIPLET_MARGIN
from wsss_steps.networks.io import load_classifier, model_identity
from wsss_steps.networks.weight_map import save_weight_map_generator
from wsss_steps.training.augment import TrainAugmentation
from wsss_steps.training.classification import ClassificationDataset, TripletDataset
from wsss_steps.training.schedules import POLY_POWER
from wsss_steps.training.weight_map import StaleEpochFile, WeightMapRecipe, train_weight_map

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "ce", "l1", "inner", "outer", "reg", "val_score", "val_gt_known",
                  "seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    io = parser.add_argument_group("files")
    io.add_argument("--classifier", required=True, type=Path, help="the frozen classifier f (model.pt)")
    io.add_argument("--manifest", required=True, type=Path, help="training images (manifest CSV)")
    io.add_argument("--val-manifest", required=True, type=Path,
                    help="the images whose maps give S each epoch (their boxes, if any, only the diagnostic)")
    io.add_argument("--out", required=True, type=Path, help="the generator of the chosen epoch (.pt)")
    io.add_argument("--metrics", type=Path, help="CSV with one row per epoch (S, GT-known)")
    net = parser.add_argument_group("network and loss")
    net.add_argument("--backbone", choices=("efficientnet_lite0",), default="efficientnet_lite0",
                     help="the U-Net's encoder (default: %(default)s)")
    net.add_argument("--backbone-weights", type=Path, help="local ImageNet weights (default: its package's)")
    net.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                     help="ImageNet-initialised encoder (default: yes)")
    net.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                     help="keep the encoder's BatchNorm statistics (default: yes when pretrained)")
    net.add_argument("--l1-weight", type=float, default=1.0,
                     help="λ of the L1 term (method II: of R, the same mean weight) (default: %(default)s)")
    net.add_argument("--method", choices=("i", "ii"), default="i",
                     help="i: CE against the classifier; ii: triplet-trained f, L_inner + L_outer (default: i)")
    net.add_argument("--margin", type=float, default=TRIPLET_MARGIN, help="method II: triplet margin (default: 1)")
    net.add_argument("--embedding-epochs", type=int, default=5,
                     help="method II: epochs of f's triplet training (default: %(default)s)")
    net.add_argument("--embedding-lr", type=float, default=1e-4,
                     help="method II: Adam's learning rate for f (default: %(default)s)")
    train_group = parser.add_argument_group("training")
    train_group.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    train_group.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    train_group.add_argument("--lr", type=float, default=1e-4, help="Adam's learning rate (default: %(default)s)")
    train_group.add_argument("--weight-decay", type=float, default=0.0, help="(default: %(default)s)")
    train_group.add_argument("--resize-long", type=int, nargs=2, metavar=("MIN", "MAX"), default=(320, 640),
                             help="random size of the long image side (default: 320 640)")
    train_group.add_argument("--crop", type=int, default=512, help="square crop (default: %(default)s)")
    train_group.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    add_checkpoint_arguments(parser)
    run = add_run_arguments(parser, training=True)
    run.add_argument("--name", default="", help="entry name stored in the model")
    run.add_argument("--dataset", default="", help="dataset name (default: from the manifest)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    problems = check_checkpoint(args)
    if args.checkpoint_dir is None:
        problems.append("--checkpoint-dir is required: every epoch's generator is kept there for the choice")
    for name in ("epochs", "batch_size", "crop"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be ≥ 1, not {getattr(args, name)}")
    if args.batch_size < 2:
        problems.append(f"--batch-size must be ≥ 2 (BatchNorm in the decoder), not {args.batch_size}")
    if args.l1_weight < 0:
        problems.append(f"--l1-weight must be ≥ 0, not {args.l1_weight}")
    if args.method == "ii" and (args.embedding_epochs < 1 or args.margin <= 0):
        problems.append(f"method ii needs --embedding-epochs ≥ 1 and --margin > 0, not {args.embedding_epochs} "
                        f"and {args.margin}")
    if not 1 <= args.resize_long[0] <= args.resize_long[1]:
        problems.append(f"--resize-long needs 1 ≤ MIN ≤ MAX, not {args.resize_long}")
    if problems:
        raise SystemExit("train_weight_map: " + "; ".join(problems))
    if args.freeze_bn is None:
        args.freeze_bn = bool(args.pretrained)


def training_settings(args: argparse.Namespace, manifest: Manifest, val_manifest: Manifest,
                      classifier_identity: str) -> dict[str, Any]:
    """Everything that shapes the trained weights and the choice (not output paths, device, threads)."""
    settings: dict[str, Any] = {
        "kind": "weight_map", "classifier": classifier_identity, "backbone": args.backbone,
        "pretrained": bool(args.pretrained),
        "backbone_weights": str(args.backbone_weights) if args.pretrained and args.backbone_weights else None,
        "freeze_bn": bool(args.freeze_bn), "l1_weight": args.l1_weight, "epochs": args.epochs,
        "batch_size": args.batch_size, "optimizer": "adam", "lr": args.lr, "weight_decay": args.weight_decay,
        "poly_power": POLY_POWER, "resize_long": list(args.resize_long), "crop": args.crop, "seed": args.seed,
        "box_fraction": BOX_FRACTION, "train_digest": manifest.content_digest(),
        "val_digest": val_manifest.content_digest(),
    }
    if args.method == "ii":  # method I's identity stays what it was
        settings.update(method="ii", margin=args.margin, embedding=embedding_settings(args, manifest,
                                                                                      classifier_identity))
    return settings


def embedding_settings(args: argparse.Namespace, manifest: Manifest, classifier_identity: str) -> dict[str, Any]:
    """What shapes method II's f: its start (the classifier), data and recipe."""
    return {"kind": "weight_map_embedding", "classifier": classifier_identity, "epochs": args.embedding_epochs,
            "lr": args.embedding_lr, "margin": args.margin, "batch_size": args.batch_size, "optimizer": "adam",
            "poly_power": POLY_POWER, "resize_long": list(args.resize_long), "crop": args.crop, "seed": args.seed,
            "freeze_bn": bool(args.freeze_bn), "train_digest": manifest.content_digest()}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    device = start_run(args)
    manifest = read_manifest(args.manifest, args.dataset)
    val_manifest = read_manifest(args.val_manifest, args.dataset)
    classifier, classifier_meta = load_classifier(args.classifier, device)
    if classifier_meta.get("class_names") not in (None, list(manifest.class_names)):
        raise SystemExit(f"train_weight_map: {args.classifier} was trained on the classes "
                         f"{classifier_meta.get('class_names')}, not {list(manifest.class_names)}")
    classifier.requires_grad_(False)
    classifier.eval()
    settings = training_settings(args, manifest, val_manifest, model_identity(args.classifier, classifier_meta))

    plan = loop_settings(args, "train_weight_map", device, settings, METRIC_COLUMNS, keep_epoch_weights=True)
    augmentation = TrainAugmentation(tuple(args.resize_long), args.crop, flip=True)
    if args.method == "ii":
        try:
            dataset: ClassificationDataset | TripletDataset = TripletDataset(manifest, augmentation, args.seed)
        except ValueError as error:
            raise SystemExit(f"train_weight_map: method ii: {error}") from error
    else:
        dataset = ClassificationDataset(manifest, augmentation, args.seed)
    val_set = ClassificationDataset(val_manifest)
    recipe = WeightMapRecipe(
        method=args.method, backbone=args.backbone, pretrained=args.pretrained, backbone_weights=args.backbone_weights,
        freeze_bn=args.freeze_bn, l1_weight=args.l1_weight, lr=args.lr, weight_decay=args.weight_decay,
        margin=args.margin, embedding_epochs=args.embedding_epochs, embedding_lr=args.embedding_lr)
    log.info("training the weight-map generator (method %s, %s encoder) against %s on %d images, S on %d images, "
             "%d epochs, device %s", args.method.upper(), args.backbone, args.classifier, len(dataset), len(val_set),
             args.epochs, device)
    try:
        outcome = train_weight_map(classifier, dataset, val_set, plan, recipe, settings.get("embedding"))
    except StaleEpochFile as error:
        raise SystemExit(f"train_weight_map: {error}") from error
    if outcome.chosen_epoch is None:
        return 0
    chosen, history = outcome.chosen_epoch, outcome.result.history
    per_epoch = [{"epoch": int(row["epoch"]), "score": float(row["val_score"]),
                  "gt_known": float(row["val_gt_known"]) if row.get("val_gt_known") else None}
                 for row in history]
    meta = {"dataset": args.dataset or manifest.dataset, "name": args.name, "training": settings,
            "settings_hash": outcome.result.settings_hash, "epochs_trained": args.epochs, "chosen_epoch": chosen,
            "per_epoch": per_epoch, "class_names": list(manifest.class_names), "method": args.method}
    save_weight_map_generator(args.out, outcome.generator.cpu().eval(), meta)
    log.info("early stopping: epoch %d of %d has the highest mean S (%.4f); wrote %s", chosen, args.epochs,
             outcome.scores[chosen - 1], args.out)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
