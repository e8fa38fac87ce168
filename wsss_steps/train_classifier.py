"""Trains a CAM classifier (docs/methods.md §1; ``--variant``: `wsss_steps.training.classification`).

Multi-label soft-margin loss on GAP logits (``--loss softmax``: cross-entropy over the image's one
class, for WSOL); SGD with momentum 0.9, the 1×1 classifier head at
``--head-lr-mult`` × the learning rate, weight decay, poly decay (power 0.9) over all steps
(IRN: lr_t = lr · (1 − t/T)^0.9, applied before step t). Augmentation: random resize of the long
side, flip, normalisation, random crop (`wsss_steps.training.augment`).

Determinism: with the same settings on the CPU the weights are bitwise the same. The epoch order
and every sample's augmentation are derived from (seed, epoch, index), never from a running RNG
state, so a resumed run continues exactly as an uninterrupted one would.

The loop (seeding, schedule, checkpoints) is `wsss_steps.training.loop`. Resume: with ``--checkpoint-dir``, ``last.pt`` there is written every ``--checkpoint-every``
epochs and after the last one; on start, a ``last.pt`` written with the same settings (hash of
everything that shapes the weights) is continued; any other is ignored and training starts over.

Example:
    python -m wsss_steps.train_classifier --manifest data/manifest/train.csv \\
        --val-manifest data/manifest/val.csv --out model.pt --metrics metrics.csv \\
        --backbone small_resnet --epochs 5 --resize-long 96 160 --crop 128
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from wsss_steps.cli import (
    add_checkpoint_arguments,
    add_run_arguments,
    check_checkpoint,
    loop_settings,
    start_run,
    step_parser,
)
from wsss_steps.data.manifest import Manifest, read_manifest
from wsss_steps.networks.backbones import BACKBONES, OUTPUT_STRIDES, build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.io import load_classifier, model_identity, save_classifier
from wsss_steps.training.augment import TrainAugmentation
from wsss_steps.training.classification import (
    ClassificationDataset,
    evaluate_classifier,
    format_metric,
    require_single_label,
)
from wsss_steps.training.loop import (
    Trainee,
    set_bn_frozen,
    steps_per_epoch,
    train,
    write_csv,
)
from wsss_steps.training.schedules import POLY_POWER
from wsss_steps.training.variants import CLASSIFIER_VARIANTS, VariantSettings

log = logging.getLogger(__name__)

MOMENTUM = 0.9
METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_map", "seconds")
# The variants' loss terms and weights, averaged per epoch (columns only for the variant's own terms).
VARIANT_COLUMNS = {
    "puzzle": ("class_loss", "puzzle_class_loss", "reconstruction_loss", "alpha"),
    "cse": ("class_loss", "erased_loss", "cse_lambda"),
    "noc": ("noc_loss", "noc_lambda", "erased_fraction"),
}
SUMMARY_COLUMNS = ("dataset", "stage", "method", "classifier", "split", "metric", "value")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    io = parser.add_argument_group("files")
    io.add_argument("--manifest", required=True, type=Path, help="training split manifest CSV")
    io.add_argument("--val-manifest", type=Path, help="validation split manifest CSV (mAP per epoch)")
    io.add_argument("--out", required=True, type=Path, help="the trained classifier (.pt)")
    io.add_argument("--metrics", type=Path, help="CSV with one row per epoch")
    io.add_argument("--summary", type=Path,
                    help="long-form CSV rows of the final val mAP and per-class AP (needs --val-manifest)")
    net = parser.add_argument_group("network")
    net.add_argument("--variant", choices=sorted(CLASSIFIER_VARIANTS), default="cam", help="training variant (default: %(default)s)")
    net.add_argument("--backbone", choices=BACKBONES, default="small_resnet", help="(default: %(default)s)")
    net.add_argument("--backbone-weights", type=Path,
                     help="local ImageNet state-dict file (resnets: default the torchvision cache; "
                     "efficientnet_lite0: default the file of its package)")
    net.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                     help="start from ImageNet weights (default: yes, except for small_resnet)")
    net.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES,
                     help="default 8 for small_resnet, 16 otherwise")
    net.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                     help="keep BatchNorm statistics fixed while training, as IRN's FixedBatchNorm "
                     "(default: yes when pretrained)")
    net.add_argument("--ordinary", type=Path,
                     help="the ordinary classifier (.pt) of oc_cse and p_oc (frozen) and p_noc (trained "
                     "adversarially from it); its classes must be the manifest's")
    defaults = VariantSettings()
    variant = parser.add_argument_group("variant settings (docs/methods.md §3; each variant reads its own)")
    variant.add_argument("--loss", choices=("multilabel", "softmax"), default=defaults.loss,
                         help="multi-label soft margin (WSSS) or softmax cross-entropy over the image's one "
                         "class (WSOL; variant cam only) (default: %(default)s)")
    variant.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing,
                         help="ε of every classification target: y(1 − ε) + ε/2 (+LS: 0.1; default: %(default)s)")
    variant.add_argument("--puzzle-alpha", type=float, default=defaults.puzzle_alpha,
                         help="Puzzle-CAM's α at the end of its ramp from 0 (default: %(default)s)")
    variant.add_argument("--puzzle-ramp", type=float, default=defaults.puzzle_ramp,
                         help="fraction of training over which α rises (default: %(default)s)")
    variant.add_argument("--cse-lambda", type=float, nargs=2, metavar=("FROM", "TO"),
                         default=defaults.cse_lambda, help="λ_cse, linear over training (default: 0.3 1.0)")
    variant.add_argument("--cse-mask-norm", choices=("batch", "image"), default=defaults.cse_mask_norm,
                         help="ψ(A_r) divided by the batch's maximum (OC-CSE's code) or each image's "
                         "(default: %(default)s)")
    variant.add_argument("--noc-every", type=int, default=defaults.noc_every,
                         help="k_noc: noc trains after every k-th step of f (default: %(default)s)")
    variant.add_argument("--noc-delta", type=float, default=defaults.noc_delta,
                         help="δ_noc of the hard mask (default: %(default)s)")
    variant.add_argument("--noc-lambda", type=float, nargs=2, metavar=("FROM", "TO"),
                         default=defaults.noc_lambda, help="λ_noc, linear over training (default: 0.0 1.0)")
    variant.add_argument("--noc-mask", choices=("reference_code", "methods_formula"), default=defaults.noc_mask,
                         help="erase ψ > δ (P-NOC's code) or ψ ≥ 1 − δ (docs/methods.md §3 as written) "
                         "(default: %(default)s)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=5, help="(default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    train.add_argument("--lr", type=float, default=0.1,
                       help="backbone learning rate before poly decay (default: %(default)s)")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="(default: %(default)s)")
    train.add_argument("--head-lr-mult", type=float, default=10.0,
                       help="learning-rate factor of the classifier head (default: %(default)s)")
    train.add_argument("--resize-long", type=int, nargs=2, metavar=("MIN", "MAX"), default=(320, 640),
                       help="random size of the long image side (default: 320 640)")
    train.add_argument("--crop", type=int, default=512,
                       help="square crop size, zero-padded where the image is smaller (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0,
                       help="seeds the init, epoch order and augmentation (default: %(default)s)")
    train.add_argument("--validate-every", type=int, default=1, metavar="N",
                       help="validate after every N-th epoch and the last; the weights do not depend on it "
                       "(default: %(default)s)")
    add_checkpoint_arguments(parser)
    run = add_run_arguments(parser, training=True)
    run.add_argument("--name", default="cam", help="classifier name for the summary rows (default: %(default)s)")
    run.add_argument("--dataset", default="", help="dataset name (default: from the manifest)")
    return parser


def _resolve_defaults(args: argparse.Namespace) -> None:
    if args.pretrained is None:
        args.pretrained = args.backbone != "small_resnet"
    if args.output_stride is None:
        args.output_stride = 8 if args.backbone == "small_resnet" else 16
    if args.freeze_bn is None:
        args.freeze_bn = bool(args.pretrained)
    problems = []
    if args.epochs < 1:
        problems.append(f"--epochs must be ≥ 1, not {args.epochs}")
    if args.batch_size < 1:
        problems.append(f"--batch-size must be ≥ 1, not {args.batch_size}")
    problems += check_checkpoint(args)
    if args.validate_every < 1:
        problems.append(f"--validate-every must be ≥ 1, not {args.validate_every}")
    if args.summary and not args.val_manifest:
        problems.append("--summary needs --val-manifest")
    if args.seed < 0:
        problems.append(f"--seed must be ≥ 0, not {args.seed}")
    variant = CLASSIFIER_VARIANTS[args.variant]
    if variant.needs_ordinary() and args.ordinary is None:
        problems.append(f"--variant {args.variant} needs --ordinary (the ordinary classifier's model file)")
    if not variant.needs_ordinary() and args.ordinary is not None:
        problems.append(f"--ordinary is read by oc_cse, p_oc and p_noc only, not by {args.variant}")
    if variant.puzzle and args.crop % (2 * args.output_stride):
        problems.append(f"--variant {args.variant}: --crop {args.crop} must be divisible by 2 × the output "
                        f"stride ({2 * args.output_stride}) so that the 2×2 tiles' CAMs merge into the image's")
    if args.loss == "softmax" and args.variant != "cam":
        problems.append(f"--loss softmax is for the variant cam (WSOL), not {args.variant}")
    if not 0 <= args.label_smoothing < 1:
        problems.append(f"--label-smoothing must be in [0, 1), not {args.label_smoothing}")
    if args.noc_every < 1:
        problems.append(f"--noc-every must be ≥ 1, not {args.noc_every}")
    if problems:
        raise SystemExit("train_classifier: " + "; ".join(problems))


def variant_settings(args: argparse.Namespace) -> VariantSettings:
    return VariantSettings(
        loss=args.loss, label_smoothing=args.label_smoothing, puzzle_alpha=args.puzzle_alpha, puzzle_ramp=args.puzzle_ramp,
        cse_lambda=tuple(args.cse_lambda), cse_mask_norm=args.cse_mask_norm, noc_every=args.noc_every,
        noc_delta=args.noc_delta, noc_lambda=tuple(args.noc_lambda), noc_mask=args.noc_mask)


def training_settings(args: argparse.Namespace, manifest: Manifest, ordinary_identity: str | None = None
                      ) -> dict[str, Any]:
    """Everything that shapes the trained weights (not paths of outputs, device or threads)."""
    weights = None
    if args.pretrained and args.backbone_weights:
        path = Path(args.backbone_weights).expanduser().resolve()
        weights = {"path": str(path), "bytes": path.stat().st_size if path.is_file() else None}
    return {
        "variant": args.variant, "backbone": args.backbone, "pretrained": bool(args.pretrained),
        "backbone_weights": weights, "output_stride": args.output_stride,
        "freeze_bn": bool(args.freeze_bn), "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "weight_decay": args.weight_decay, "head_lr_mult": args.head_lr_mult,
        "momentum": MOMENTUM, "poly_power": POLY_POWER, "resize_long": list(args.resize_long),
        "crop": args.crop, "seed": args.seed, "class_names": list(manifest.class_names),
        "train_images": len(manifest.records), "train_digest": manifest.content_digest(),
        "variant_settings": CLASSIFIER_VARIANTS[args.variant].settings_used(variant_settings(args)),
        "ordinary": ordinary_identity,
    }

def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _resolve_defaults(args)
    device = start_run(args)
    train_manifest = read_manifest(args.manifest, args.dataset)
    dataset_name = args.dataset or train_manifest.dataset
    val_manifest = read_manifest(args.val_manifest, args.dataset) if args.val_manifest else None
    if val_manifest is not None and val_manifest.class_names != train_manifest.class_names:
        raise SystemExit(f"train_classifier: the class lists of {args.manifest} and {args.val_manifest} differ")
    if args.loss == "softmax":
        try:
            for manifest_path, split in ((args.manifest, train_manifest), (args.val_manifest, val_manifest)):
                if split is not None:
                    require_single_label(split, f"train_classifier --loss softmax, {manifest_path}")
        except ValueError as error:
            raise SystemExit(str(error)) from error
    ordinary = ordinary_meta = None
    if args.ordinary is not None:
        ordinary, ordinary_meta = load_classifier(args.ordinary, device)
        if ordinary_meta.get("class_names") not in (None, list(train_manifest.class_names)):
            raise SystemExit(f"train_classifier: the ordinary classifier {args.ordinary} was trained on the "
                             f"classes {ordinary_meta.get('class_names')}, not {list(train_manifest.class_names)}")
    settings = training_settings(args, train_manifest,
                                 model_identity(args.ordinary, ordinary_meta) if ordinary_meta else None)

    torch.manual_seed(args.seed)
    backbone = build_backbone(args.backbone, args.backbone_weights, args.output_stride, args.pretrained)
    model = CamClassifier(backbone, train_manifest.num_classes).to(device)
    base_lrs = [args.lr, args.lr * args.head_lr_mult]

    def sgd(network: CamClassifier) -> torch.optim.SGD:
        """The recipe's optimiser of a classifier (f, and P-NOC's noc with the same recipe)."""
        backbone_params, head_params = network.parameter_groups()
        return torch.optim.SGD(
            [{"params": backbone_params, "lr": base_lrs[0]}, {"params": head_params, "lr": base_lrs[1]}],
            lr=args.lr, momentum=MOMENTUM, weight_decay=args.weight_decay)

    def train_mode_of(network: torch.nn.Module) -> None:
        network.train()
        if args.freeze_bn:
            set_bn_frozen(network)

    optimizer = sgd(model)
    variant_class = CLASSIFIER_VARIANTS[args.variant]
    ordinary_optimizer = sgd(ordinary) if variant_class.noc and ordinary is not None else None
    variant = variant_class(variant_settings(args), args.seed, ordinary, ordinary_optimizer, tuple(base_lrs),
                            train_mode_of)
    augmentation = TrainAugmentation(tuple(args.resize_long), args.crop, flip=True)
    train_set = ClassificationDataset(train_manifest, augmentation, args.seed)
    val_set = ClassificationDataset(val_manifest) if val_manifest is not None else None
    total_steps = steps_per_epoch(len(train_set), args.batch_size) * args.epochs
    log.info("training %s (%s, output stride %d, %s) on %d images of %s, %d classes, %d epochs of "
             "%d steps, device %s", args.variant, args.backbone, args.output_stride,
             "ImageNet init" if args.pretrained else "random init", len(train_set), dataset_name,
             train_manifest.num_classes, args.epochs, total_steps // args.epochs, device)

    def step(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], global_step: int
             ) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels, _ = batch
        return variant.loss(model, images.to(device, non_blocking=True), labels.to(device, non_blocking=True),
                            global_step, total_steps)

    def validate(epoch: int) -> dict[str, Any]:
        model.eval()
        result = evaluate_classifier(model, val_set, device, args.batch_size, args.num_workers, args.loss)
        row = {"val_loss": format_metric(result["loss"]), "val_map": format_metric(result["map"]),
               "result": result}
        if "top1" in result:
            row["val_top1"] = format_metric(result["top1"])
        return row

    trainee = Trainee(model, optimizer, base_lrs, train_set, step, train_mode=lambda: train_mode_of(model),
                      validate=validate if val_set is not None else None, extra_state=variant.extra_state(),
                      after_step=lambda global_step: variant.after_step(global_step, total_steps))
    columns = list(METRIC_COLUMNS[:-1]) + (["val_top1"] if args.loss == "softmax" else [])
    for flag, names in VARIANT_COLUMNS.items():
        if getattr(variant_class, flag):
            columns += [name for name in names if name not in columns]
    plan = loop_settings(args, "train_classifier", device, settings, (*columns, "seconds"),
                         loss_column="train_loss", validate_every=args.validate_every)
    outcome = train(trainee, plan)
    if not outcome.finished:
        return 0
    model.eval()
    last_eval = outcome.validation["result"] if outcome.validation is not None else None
    if val_set is not None and last_eval is None:  # resumed after the last epoch
        last_eval = evaluate_classifier(model, val_set, device, args.batch_size, args.num_workers, args.loss)
    meta = {
        "variant": args.variant, "loss": args.loss, "class_names": list(train_manifest.class_names),
        "dataset": dataset_name, "name": args.name, "training": settings, "epochs_trained": args.epochs,
        "val_map": last_eval["map"] if last_eval is not None else None,
        "settings_hash": outcome.settings_hash,
    }
    save_classifier(args.out, model.cpu(), meta)
    if args.summary and last_eval is not None:
        rows = [{"metric": "map", "value": format_metric(last_eval["map"])}]
        if "top1" in last_eval:
            rows.append({"metric": "top1_accuracy", "value": format_metric(last_eval["top1"])})
        # A class without a positive val image has no AP (NaN): no row, rather than an empty value.
        rows += [{"metric": f"ap/{name}", "value": format_metric(float(ap))}
                 for name, ap in zip(train_manifest.class_names, last_eval["ap"], strict=True)
                 if math.isfinite(float(ap))]
        for row in rows:
            row.update(dataset=dataset_name, stage="classifier", method=args.variant,
                       classifier=args.name, split="val")
        write_csv(args.summary, SUMMARY_COLUMNS, rows)
    log.info("wrote %s%s", args.out, f" (val mAP {last_eval['map']:.4f})" if last_eval else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
