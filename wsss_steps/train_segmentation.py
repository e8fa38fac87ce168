"""Trains the segmentation network on pseudo masks, or on ground-truth masks (METHODS §6).

Masks: ``--masks FILE`` reads each image's ``mask`` (0 = background, k + 1 = class k, 255 =
ignore) from a pseudo-mask HDF5 file (`wsss_steps.pseudo_masks`); ``--ground-truth`` reads the
manifest's ground-truth masks instead (the fully supervised upper bound, method ``full``).

Network: `wsss_steps.networks.segmentation` (``--head deeplabv2`` ASPP 6/12/18/24, or
``deeplabv3plus``), backbone from ImageNet (``--pretrained``), random, or, with
``--init-classifier``, the trained CAM classifier's backbone (image-level labels only).

Loss: cross-entropy over background + C classes at the input resolution, pixels labelled 255
ignored; ``--class-balanced`` weighs each label by median frequency / its frequency over the
training masks (labels absent from them get weight 0). SGD with momentum 0.9, the head at
``--head-lr-mult`` × the learning rate, weight decay, poly decay (power 0.9) over all steps.
Augmentation: random long side in ``--resize-long`` (the scale augmentation: 0.5–1.5 × the image
size), flip, random crop ``--crop`` (label padding 255) (`wsss_steps.augment`).

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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsss_steps.augment import TrainAugmentation, sample_rng
from wsss_steps.datasets import Manifest, read_manifest
from wsss_steps.image_io import IGNORE_LABEL, read_image, read_label_mask
from wsss_steps.logs import setup_logging
from wsss_steps.map_store import MapReader
from wsss_steps.networks.backbones import BACKBONES, OUTPUT_STRIDES
from wsss_steps.networks.segmentation import (
    HEADS,
    PAPER_RATES,
    build_segmentation_net,
    init_backbone_from_classifier,
    save_segmentation,
)
from wsss_steps.preprocess import resolve_device
from wsss_steps.train_relation import file_digest
from wsss_steps.training import (
    POLY_POWER,
    add_checkpoint_arguments,
    add_run_arguments,
    set_bn_frozen,
    settings_hash,
    train_epochs,
)

log = logging.getLogger("wsss_steps.train_segmentation")

MASK_NAME = "mask"
MOMENTUM = 0.9
METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "seconds")


class MaskError(ValueError):
    """A training mask that is missing or does not fit its image; the message names the image."""


class MaskSource:
    """Each training image's label mask: from a pseudo-mask HDF5 file or the ground truth."""

    def __init__(self, manifest: Manifest, masks_path: Path | None):
        self.manifest = manifest
        self.masks_path = masks_path
        self._reader: MapReader | None = None  # opened lazily: one handle per worker process
        if masks_path is not None:
            with MapReader(masks_path) as reader:
                reader.require(manifest.ids)
        else:
            missing = [r.image_id for r in manifest.records if r.mask_path is None]
            if missing:
                raise MaskError(f"--ground-truth: {len(missing)} image(s) of {manifest.split} have no mask, "
                                f"e.g. {missing[:5]}")

    def read(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        record = self.manifest.records[index]
        if self.masks_path is None:
            source = str(record.mask_path)
            mask = read_label_mask(record.mask_path)
        else:
            if self._reader is None:
                self._reader = MapReader(self.masks_path)
            source = str(self.masks_path)
            data = self._reader.read(record.image_id)
            if MASK_NAME not in data:
                raise MaskError(f"image {record.image_id!r} in {source} has no dataset {MASK_NAME!r} "
                                f"(it holds {sorted(data)})")
            mask = np.asarray(data[MASK_NAME], dtype=np.uint8)
        if mask.shape != shape:
            raise MaskError(f"image {record.image_id!r}: mask in {source} is {mask.shape}, the image is {shape}")
        bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(self.manifest.num_classes + 1), IGNORE_LABEL])
        if bad.size:
            raise MaskError(f"image {record.image_id!r}: mask in {source} holds values {bad.tolist()} outside "
                            f"0..{self.manifest.num_classes} and {IGNORE_LABEL}")
        return mask


class SegmentationDataset(Dataset):
    """Augmented images and masks; sample ``index`` of epoch ``e`` uses ``sample_rng(seed, e, index)``.
    Items: (image float32 (3, crop, crop), label int64 (crop, crop))."""

    def __init__(self, manifest: Manifest, masks: MaskSource, augmentation: TrainAugmentation, seed: int = 0,
                 cache: bool = False):
        self.manifest = manifest
        self.masks = masks
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.manifest.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None and index in self.cache:
            image, mask = self.cache[index]
        else:
            image = read_image(self.manifest.records[index].image_path)
            mask = self.masks.read(index, image.shape[:2])
            if self.cache is not None:
                self.cache[index] = (image, mask)
        out = self.augmentation(image, sample_rng(self.seed, self.epoch, index), mask)
        return torch.from_numpy(out["image"]), torch.from_numpy(out["label"].astype(np.int64))


def label_frequencies(masks: MaskSource, manifest: Manifest) -> np.ndarray:
    """Fraction of the non-ignored training pixels carrying each label (L = C + 1)."""
    counts = np.zeros(manifest.num_classes + 1, dtype=np.int64)
    for index, record in enumerate(manifest.records):
        mask = masks.read(index, (record.height, record.width)) if record.height else \
            masks.read(index, read_image(record.image_path).shape[:2])
        counts += np.bincount(mask[mask != IGNORE_LABEL].ravel(), minlength=counts.size)
    total = counts.sum()
    if total == 0:
        raise MaskError("the training masks label no pixel (all 255)")
    return counts / total


def class_balanced_weights(frequencies: np.ndarray) -> np.ndarray:
    """Median-frequency balancing: median(f over present labels) / f_c; 0 for absent labels."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    present = frequencies > 0
    weights = np.zeros_like(frequencies)
    weights[present] = np.median(frequencies[present]) / frequencies[present]
    return weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wsss_steps.train_segmentation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("files")
    io.add_argument("--manifest", required=True, type=Path, help="training split manifest CSV")
    source = io.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks", type=Path, help="pseudo-mask HDF5 file (groups holding 'mask')")
    source.add_argument("--ground-truth", action="store_true", help="train on the manifest's ground-truth masks")
    io.add_argument("--init-classifier", type=Path,
                    help="start the backbone from this trained classifier's backbone")
    io.add_argument("--out", required=True, type=Path, help="the trained network (.pt)")
    io.add_argument("--metrics", type=Path, help="CSV with one row per epoch")
    add_checkpoint_arguments(io)
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
    run = add_run_arguments(parser)
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
    problems = []
    for name in ("epochs", "batch_size", "checkpoint_every", "crop", "width"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be ≥ 1, not {getattr(args, name)}")
    if min(args.aspp_rates) < 1:
        problems.append(f"--aspp-rates must be ≥ 1, not {args.aspp_rates}")
    if not 1 <= args.resize_long[0] <= args.resize_long[1]:
        problems.append(f"--resize-long needs 1 ≤ MIN ≤ MAX, not {args.resize_long}")
    if args.stop_after_epochs is not None and (args.stop_after_epochs < 1 or args.checkpoint_dir is None):
        problems.append("--stop-after-epochs needs a value ≥ 1 and --checkpoint-dir")
    if args.seed < 0:
        problems.append(f"--seed must be ≥ 0, not {args.seed}")
    if problems:
        raise SystemExit("train_segmentation: " + "; ".join(problems))


def training_settings(args: argparse.Namespace, manifest: Manifest) -> dict[str, Any]:
    """Everything that shapes the trained weights (not output paths, device or threads)."""
    digest = hashlib.sha256()
    for record in manifest.records:
        digest.update(f"{record.image_id}\t{record.mask_path if args.ground_truth else ''}\n".encode())
    return {
        "kind": "segmentation", "masks": "ground_truth" if args.ground_truth else file_digest(args.masks),
        "init_classifier": file_digest(args.init_classifier) if args.init_classifier else None,
        "head": args.head, "backbone": args.backbone, "pretrained": bool(args.pretrained),
        "backbone_weights": str(args.backbone_weights) if args.pretrained and args.backbone_weights else None,
        "output_stride": args.output_stride, "aspp_rates": list(args.aspp_rates), "width": args.width,
        "freeze_bn": bool(args.freeze_bn), "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "head_lr_mult": args.head_lr_mult, "weight_decay": args.weight_decay,
        "momentum": MOMENTUM, "poly_power": POLY_POWER, "resize_long": list(args.resize_long),
        "crop": args.crop, "class_balanced": bool(args.class_balanced), "seed": args.seed,
        "class_names": list(manifest.class_names), "train_digest": digest.hexdigest(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _resolve_defaults(args)
    setup_logging(args.log)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    manifest = read_manifest(args.manifest, args.dataset)
    masks = MaskSource(manifest, None if args.ground_truth else args.masks)
    settings = training_settings(args, manifest)
    expected_hash = settings_hash(settings)

    torch.manual_seed(args.seed)
    model = build_segmentation_net(args.head, args.backbone, manifest.num_classes + 1, args.output_stride,
                                   args.aspp_rates, args.width, args.pretrained, args.backbone_weights)
    if args.init_classifier is not None:
        classifier_meta = init_backbone_from_classifier(model, args.init_classifier)
        if tuple(classifier_meta.get("class_names", manifest.class_names)) != manifest.class_names:
            raise SystemExit(f"train_segmentation: classifier {args.init_classifier} was trained on classes "
                             f"{classifier_meta['class_names']}, {args.manifest} has {list(manifest.class_names)}")
    model = model.to(device)
    weight = None
    if args.class_balanced:
        weights = class_balanced_weights(label_frequencies(masks, manifest))
        log.info("class-balanced loss weights: %s", np.round(weights, 3).tolist())
        weight = torch.as_tensor(weights, dtype=torch.float32, device=device)
    backbone_params, head_params = model.parameter_groups()
    base_lrs = [args.lr, args.lr * args.head_lr_mult]
    optimizer = torch.optim.SGD([{"params": backbone_params, "lr": base_lrs[0]},
                                 {"params": head_params, "lr": base_lrs[1]}],
                                lr=args.lr, momentum=MOMENTUM, weight_decay=args.weight_decay)
    augmentation = TrainAugmentation(tuple(args.resize_long), args.crop, flip=True)
    dataset = SegmentationDataset(manifest, masks, augmentation, args.seed, args.cache_images)
    log.info("training %s on %s (%s) with %s masks: %d images, %d labels, %d epochs, device %s", args.head,
             args.backbone, "classifier init" if args.init_classifier else
             ("ImageNet init" if args.pretrained else "random init"),
             "ground-truth" if args.ground_truth else f"pseudo ({args.masks})", len(dataset),
             manifest.num_classes + 1, args.epochs, device)

    def train_mode(net: torch.nn.Module) -> None:
        net.train()
        if args.freeze_bn:
            set_bn_frozen(net.backbone)

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        logits = model(images)
        loss = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_LABEL)
        if not torch.isfinite(loss):  # a batch of only ignored pixels: no gradient, no NaN
            loss = logits.sum() * 0.0
        return loss, {}

    checkpoint_path = args.checkpoint_dir / "last.pt" if args.checkpoint_dir else None
    finished = train_epochs(model, optimizer, base_lrs, dataset, step, epochs=args.epochs,
                            batch_size=args.batch_size, seed=args.seed, device=device,
                            checkpoint_path=checkpoint_path, checkpoint_every=args.checkpoint_every,
                            expected_hash=expected_hash, settings=settings, metrics_path=args.metrics,
                            metric_columns=METRIC_COLUMNS, stop_after_epochs=args.stop_after_epochs,
                            num_workers=args.num_workers, train_mode=train_mode, name="segmentation")
    if not finished:
        return 0
    meta = {"class_names": list(manifest.class_names), "dataset": args.dataset or manifest.dataset,
            "name": args.name or ("full" if args.ground_truth else ""), "training": settings,
            "settings_hash": expected_hash, "epochs_trained": args.epochs}
    save_segmentation(args.out, model.cpu().eval(), meta)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
