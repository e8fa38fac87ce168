"""Trains the segmentation network on pseudo masks, or on ground-truth masks (docs/methods.md §6).

Masks: ``--masks FILE`` reads each image's ``mask`` (0 = background, k + 1 = class k, 255 =
ignore) from a pseudo-mask HDF5 file (`wsss_steps.pseudo_masks`); ``--ground-truth`` reads the
manifest's ground-truth masks instead (the fully supervised upper bound, method ``full``);
``--masks FILE --ground-truth-subset IDS`` is the semi-supervised setting (AdvCAM: 1,464 VOC
images with masks + 9,118 with labels only): the images listed in IDS take their ground-truth
mask, the others their pseudo mask. The model records the subset's ids. ``--semi-method cct``
trains the same setting with cross-consistency training instead (docs/methods.md §10): the subset
trains the main decoder, the other images train auxiliary decoders on perturbed features to agree
with it, and their pseudo masks (``--masks``; without it, no weak labels) are the auxiliary
decoders' weak labels. Only the main path (a plain segmentation network) is saved.

Network: `wsss_steps.networks.segmentation` (``--head deeplabv2`` ASPP 6/12/18/24, or
``deeplabv3plus``), backbone from ImageNet (``--pretrained``), random, or, with
``--init-classifier``, the trained CAM classifier's backbone (image-level labels only).

Loss: cross-entropy over background + C classes at the input resolution, pixels labelled 255
ignored; ``--class-balanced`` weighs each label by median frequency / its frequency over the
training masks (labels absent from them get weight 0). SGD with momentum 0.9, the head at
``--head-lr-mult`` × the learning rate, weight decay, poly decay (power 0.9) over all steps.
Augmentation: random long side in ``--resize-long`` (the scale augmentation: 0.5–1.5 × the image
size), flip, random crop ``--crop`` (label padding 255) (`wsss_steps.training.augment`).

Determinism, checkpoints and resume as `wsss_steps.train_classifier`: the epoch order and every
sample's augmentation come from (seed, epoch, index); ``last.pt`` in ``--checkpoint-dir`` every
``--checkpoint-every`` epochs is continued only when written with the same settings (masks and
classifier included, by content digest).

Example::

    python -m wsss_steps.train_segmentation --manifest results/synth/data/train.csv \\
        --masks results/synth/pseudo_masks/cam/cam/masks.h5 \\
        --init-classifier results/synth/classifier/cam/model.pt --out seg.pt --epochs 12 --crop 128
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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
from wsss_steps.data.manifest import DatasetError, Manifest, read_id_list, read_manifest
from wsss_steps.networks.backbones import BACKBONES, OUTPUT_STRIDES
from wsss_steps.networks.cct import PAPER_DECODERS, CCTNet, perturbation_settings, upsample
from wsss_steps.networks.segmentation import (
    HEADS,
    PAPER_RATES,
    SegmentationNet,
    build_segmentation_net,
    init_backbone_from_classifier,
    save_segmentation,
)
from wsss_steps.store.digests import file_digest
from wsss_steps.training.augment import TrainAugmentation
from wsss_steps.training.cct import (
    RAMPUP,
    UNSUPERVISED_WEIGHT,
    WEAK_WEIGHT,
    CCTDataset,
    SubsetGroundTruth,
    consistency_weights,
    softmax_mse,
    weak_cross_entropy,
)
from wsss_steps.training.loop import StepFunction, Trainee, set_bn_frozen, steps_per_epoch, train
from wsss_steps.training.schedules import POLY_POWER
from wsss_steps.training.segmentation import (
    MaskError,
    MaskSource,
    SegmentationDataset,
    class_balanced_weights,
    label_frequencies,
)

log = logging.getLogger("wsss_steps.train_segmentation")

MOMENTUM = 0.9
METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "seconds")
# CCT's parts: the main decoder's cross-entropy, the consistency d and the weak labels' cross-entropy
# (each before its weight).
CCT_METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "loss_sup", "loss_unsup", "loss_weak", "seconds")
SEMI_METHODS = ("mix", "cct")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    io = parser.add_argument_group("files")
    io.add_argument("--manifest", required=True, type=Path, help="training split manifest CSV")
    source = io.add_mutually_exclusive_group()
    source.add_argument("--masks", type=Path, help="pseudo-mask HDF5 file (groups holding 'mask')")
    source.add_argument("--ground-truth", action="store_true", help="train on the manifest's ground-truth masks")
    io.add_argument("--ground-truth-subset", type=Path,
                    help="with --masks: a split file (one image id a line) whose images train on their "
                    "ground-truth masks instead of their pseudo masks (the semi-supervised setting)")
    io.add_argument("--semi-method", choices=SEMI_METHODS, default="mix",
                    help="with --ground-truth-subset: mix (one network on ground truth + pseudo masks) or "
                    "cct (cross-consistency training; --masks then gives the weak labels, optional) "
                    "(default: %(default)s)")
    io.add_argument("--init-classifier", type=Path,
                    help="start the backbone from this trained classifier's backbone")
    io.add_argument("--out", required=True, type=Path, help="the trained network (.pt)")
    io.add_argument("--metrics", type=Path, help="CSV with one row per epoch")
    net = parser.add_argument_group("network")
    net.add_argument("--head", choices=HEADS, default="deeplabv2", help="(default: %(default)s)")
    net.add_argument("--backbone", choices=BACKBONES, default="resnet101", help="(default: %(default)s)")
    net.add_argument("--backbone-weights", type=Path, help="local ImageNet state-dict file (resnets)")
    net.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                     help="ImageNet init of the backbone (default: yes, except for small_resnet or with "
                     "--init-classifier)")
    net.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES, default=8, help="(default: %(default)s)")
    net.add_argument("--aspp-rates", type=int, nargs="+",
                     help="ASPP dilation rates (default: 6 12 18 24 for deeplabv2, 6 12 18 for deeplabv3plus)")
    net.add_argument("--width", type=int, default=256, help="DeepLabV3+ ASPP/decoder channels (default: %(default)s)")
    net.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                     help="keep the backbone's BatchNorm statistics fixed (default: yes when pretrained)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=20, help="(default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=10, help="(default: %(default)s)")
    train.add_argument("--lr", type=float, default=2.5e-4, help="backbone learning rate before poly decay (default: %(default)s)")
    train.add_argument("--head-lr-mult", type=float, default=10.0, help="(default: %(default)s)")
    train.add_argument("--weight-decay", type=float, default=5e-4, help="(default: %(default)s)")
    train.add_argument("--resize-long", type=int, nargs=2, metavar=("MIN", "MAX"), default=(250, 750),
                       help="random long side: the scale augmentation (default: 250 750, 0.5–1.5 × VOC's 500)")
    train.add_argument("--crop", type=int, default=321, help="square crop (default: %(default)s)")
    train.add_argument("--class-balanced", action=argparse.BooleanOptionalAction, default=False,
                       help="median-frequency class weights in the loss (default: no)")
    train.add_argument("--seed", type=int, default=0, help="seeds the init, epoch order and augmentation")
    train.add_argument("--cache-images", action=argparse.BooleanOptionalAction, default=False,
                       help="keep decoded images and masks in memory (small datasets; default: no)")
    cct = parser.add_argument_group("cross-consistency training (--semi-method cct)")
    cct.add_argument("--cct-decoders", nargs="+", metavar="PERTURBATION=COUNT", default=[],
                     help="auxiliary decoders per perturbation, over CCT's (" +
                     " ".join(f"{k}={v}" for k, v in PAPER_DECODERS.items()) + "); 0 leaves one out")
    cct.add_argument("--cct-unsupervised-weight", type=float, default=UNSUPERVISED_WEIGHT,
                     help="ω_u after the ramp-up (default: %(default)s)")
    cct.add_argument("--cct-weak-weight", type=float, default=WEAK_WEIGHT,
                     help="ω_w of the weak labels after the ramp-up (default: %(default)s)")
    cct.add_argument("--cct-rampup", type=float, default=RAMPUP,
                     help="share of the steps over which both weights ramp up (default: %(default)s)")
    add_checkpoint_arguments(parser)
    run = add_run_arguments(parser, training=True)
    run.add_argument("--name", default="", help="method name stored in the model (e.g. the pseudo masks' seeds)")
    run.add_argument("--dataset", default="", help="dataset name (default: from the manifest)")
    return parser


def _resolve_defaults(args: argparse.Namespace) -> None:
    if args.pretrained is None:
        args.pretrained = args.backbone != "small_resnet" and args.init_classifier is None
    if args.freeze_bn is None:
        args.freeze_bn = bool(args.pretrained)
    if args.aspp_rates is None:
        args.aspp_rates = list(PAPER_RATES[args.head])
    problems = check_checkpoint(args)
    for name in ("epochs", "batch_size", "crop", "width"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be ≥ 1, not {getattr(args, name)}")
    if min(args.aspp_rates) < 1:
        problems.append(f"--aspp-rates must be ≥ 1, not {args.aspp_rates}")
    if not 1 <= args.resize_long[0] <= args.resize_long[1]:
        problems.append(f"--resize-long needs 1 ≤ MIN ≤ MAX, not {args.resize_long}")
    if args.seed < 0:
        problems.append(f"--seed must be ≥ 0, not {args.seed}")
    if args.semi_method == "cct":
        if args.ground_truth_subset is None:
            problems.append("--semi-method cct needs --ground-truth-subset (the labelled images)")
        if args.ground_truth:
            problems.append("--semi-method cct trains on the subset's ground truth; --ground-truth is not for it")
        try:
            args.cct_decoders = cct_decoders(args.cct_decoders)
        except ValueError as error:
            problems.append(f"--cct-decoders: {error}")
        if min(args.cct_unsupervised_weight, args.cct_weak_weight) < 0 or not 0 <= args.cct_rampup <= 1:
            problems.append("--cct-unsupervised-weight and --cct-weak-weight must be ≥ 0, --cct-rampup in [0, 1]")
    else:
        if args.masks is None and not args.ground_truth:
            problems.append("one of --masks and --ground-truth is required")
        if args.ground_truth_subset is not None and args.masks is None:
            problems.append("--ground-truth-subset completes the pseudo masks of --masks (with --ground-truth every "
                            "image takes its ground truth already)")
    if problems:
        raise SystemExit("train_segmentation: " + "; ".join(problems))


def cct_decoders(words: Sequence[str]) -> dict[str, int]:
    """CCT's decoder counts with ``PERTURBATION=COUNT`` words over them."""
    counts = dict(PAPER_DECODERS)
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or name not in PAPER_DECODERS or not value.isdigit():
            raise ValueError(f"{word!r} is not PERTURBATION=COUNT with PERTURBATION one of {', '.join(PAPER_DECODERS)}")
        counts[name] = int(value)
    if sum(counts.values()) < 1:
        raise ValueError("CCT needs at least one auxiliary decoder")
    return counts


def ground_truth_subset(args: argparse.Namespace) -> list[str]:
    """The ids of ``--ground-truth-subset`` in split order (none without it)."""
    if args.ground_truth_subset is None:
        return []
    try:
        return read_id_list(args.ground_truth_subset)
    except DatasetError as error:
        raise SystemExit(f"train_segmentation: --ground-truth-subset: {error}") from error


def training_settings(args: argparse.Namespace, manifest: Manifest, subset: Sequence[str] = ()) -> dict[str, Any]:
    """Everything that shapes the trained weights (not output paths, device or threads)."""
    masks = "ground_truth" if args.ground_truth else (file_digest(args.masks) if args.masks else None)
    settings: dict[str, Any] = {
        "kind": "segmentation", "masks": masks,
        "init_classifier": file_digest(args.init_classifier) if args.init_classifier else None,
        "head": args.head, "backbone": args.backbone, "pretrained": bool(args.pretrained),
        "backbone_weights": str(args.backbone_weights) if args.pretrained and args.backbone_weights else None,
        "output_stride": args.output_stride, "aspp_rates": list(args.aspp_rates), "width": args.width,
        "freeze_bn": bool(args.freeze_bn), "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "head_lr_mult": args.head_lr_mult, "weight_decay": args.weight_decay,
        "momentum": MOMENTUM, "poly_power": POLY_POWER, "resize_long": list(args.resize_long),
        "crop": args.crop, "class_balanced": bool(args.class_balanced), "seed": args.seed,
        "class_names": list(manifest.class_names), "train_digest": manifest.content_digest(),
    }
    if subset:  # absent otherwise: the weakly supervised models' identity is what it was
        digest = hashlib.sha256("\n".join(sorted(subset)).encode()).hexdigest()
        settings["ground_truth_subset"] = {"images": len(subset), "ids_sha256": digest}
    if args.semi_method == "cct":  # absent otherwise, likewise
        settings["cct"] = {"decoders": dict(args.cct_decoders), "weak_labels": args.masks is not None,
                           "unsupervised_weight": args.cct_unsupervised_weight, "weak_weight": args.cct_weak_weight,
                           "rampup": args.cct_rampup, "perturbations": perturbation_settings()}
    return settings


def cct_step_function(network: CCTNet, supervised_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      device: torch.device, total_steps: int, args: argparse.Namespace) -> StepFunction:
    """CCT's loss (docs/methods.md §10): cross-entropy of the main decoder on the labelled batch
    + ω_u × the auxiliary decoders' mean consistency with the main decoder's detached prediction on
    the unlabelled batch + ω_w × their mean cross-entropy with the weak labels (with --masks)."""
    weak_labels = args.masks is not None

    def step(batch: tuple[torch.Tensor, ...], global_step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images_l, labels_l, images_u, labels_u = (t.to(device, non_blocking=True) for t in batch)
        loss_sup = supervised_loss(network(images_l), labels_l)
        size = images_u.shape[-2:]
        z = network.encode(images_u)
        with torch.no_grad():
            main = upsample(network.main_decoder(z), size)
        target = F.softmax(main, dim=1)
        foreground = main.argmax(dim=1) > 0
        consistency = weak = torch.zeros((), device=device)
        for decoder in network.aux_decoders:
            logits = upsample(decoder(z, foreground), size)
            consistency = consistency + softmax_mse(logits, target)
            if weak_labels:
                weak = weak + weak_cross_entropy(logits, labels_u)
        consistency = consistency / len(network.aux_decoders)
        weak = weak / len(network.aux_decoders)
        w_u, w_w = consistency_weights(global_step, total_steps, args.cct_unsupervised_weight, args.cct_weak_weight,
                                       args.cct_rampup)
        loss = loss_sup + w_u * consistency + w_w * weak
        return loss, {"loss_sup": loss_sup.detach(), "loss_unsup": consistency.detach(), "loss_weak": weak.detach()}

    return step


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _resolve_defaults(args)
    device = start_run(args)
    manifest = read_manifest(args.manifest, args.dataset)
    subset = ground_truth_subset(args)
    cct = args.semi_method == "cct"
    try:
        masks: MaskSource | SubsetGroundTruth
        if cct and args.masks is None:
            masks = SubsetGroundTruth(manifest, subset)
        else:
            masks = MaskSource(manifest, None if args.ground_truth else args.masks, ground_truth_ids=subset)
    except MaskError as error:
        raise SystemExit(f"train_segmentation: {error}") from error
    settings = training_settings(args, manifest, subset)

    torch.manual_seed(args.seed)
    model = build_segmentation_net(args.head, args.backbone, manifest.num_classes + 1, args.output_stride,
                                   args.aspp_rates, args.width, args.pretrained, args.backbone_weights)
    if args.init_classifier is not None:
        classifier_meta = init_backbone_from_classifier(model, args.init_classifier)
        if tuple(classifier_meta.get("class_names", manifest.class_names)) != manifest.class_names:
            raise SystemExit(f"train_segmentation: classifier {args.init_classifier} was trained on classes "
                             f"{classifier_meta['class_names']}, {args.manifest} has {list(manifest.class_names)}")
    # The auxiliary decoders draw their init after the main network's: that init is the plain one's.
    network: SegmentationNet | CCTNet = CCTNet(model, args.cct_decoders) if cct else model
    network.to(device)
    weight = None
    if args.class_balanced:
        weights = class_balanced_weights(label_frequencies(masks, manifest))
        log.info("class-balanced loss weights: %s", np.round(weights, 3).tolist())
        weight = torch.as_tensor(weights, dtype=torch.float32, device=device)
    backbone_params, head_params = network.parameter_groups()
    base_lrs = [args.lr, args.lr * args.head_lr_mult]
    optimizer = torch.optim.SGD([{"params": backbone_params, "lr": base_lrs[0]},
                                 {"params": head_params, "lr": base_lrs[1]}],
                                lr=args.lr, momentum=MOMENTUM, weight_decay=args.weight_decay)
    augmentation = TrainAugmentation(tuple(args.resize_long), args.crop, flip=True)
    dataset: SegmentationDataset | CCTDataset
    if cct:
        dataset = CCTDataset(manifest, masks, subset, augmentation, args.seed, args.cache_images)
        labels_text = (f"CCT: ground truth on {len(subset)} images ({args.ground_truth_subset}), "
                       f"{len(dataset)} unlabelled with " + (f"pseudo masks ({args.masks})" if args.masks else "no")
                       + f" weak labels, {len(network.aux_decoders)} auxiliary decoders")
    else:
        dataset = SegmentationDataset(manifest, masks, augmentation, args.seed, args.cache_images)
        labels_text = ("ground-truth" if args.ground_truth else f"pseudo ({args.masks})"
                       + (f" + ground truth on {len(subset)} images ({args.ground_truth_subset})" if subset else ""))
        labels_text += " masks"
    log.info("training %s on %s (%s) with %s: %d images, %d labels, %d epochs, device %s", args.head,
             args.backbone, "classifier init" if args.init_classifier else
             ("ImageNet init" if args.pretrained else "random init"), labels_text, len(dataset),
             manifest.num_classes + 1, args.epochs, device)

    def train_mode() -> None:
        network.train()
        if args.freeze_bn:
            set_bn_frozen(model.backbone)

    def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_LABEL)
        if not torch.isfinite(loss):  # a batch of only ignored pixels: no gradient, no NaN
            loss = logits.sum() * 0.0
        return loss

    def step(batch: tuple[torch.Tensor, torch.Tensor], global_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        return supervised_loss(model(images), labels), {}

    plan = loop_settings(args, "train_segmentation", device, settings, CCT_METRIC_COLUMNS if cct else METRIC_COLUMNS)
    step_function: StepFunction = step
    if isinstance(network, CCTNet):
        total_steps = steps_per_epoch(len(dataset), args.batch_size, plan.accumulation_steps) * args.epochs
        step_function = cct_step_function(network, supervised_loss, device, total_steps, args)
    trainee = Trainee(network, optimizer, base_lrs, dataset, step_function, train_mode=train_mode)
    outcome = train(trainee, plan)
    if not outcome.finished:
        return 0
    meta = {"class_names": list(manifest.class_names), "dataset": args.dataset or manifest.dataset,
            "name": args.name or ("full" if args.ground_truth else ""), "training": settings,
            "settings_hash": outcome.settings_hash, "epochs_trained": args.epochs,
            "ground_truth_ids": list(subset)}
    save_segmentation(args.out, model.cpu().eval(), meta)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
