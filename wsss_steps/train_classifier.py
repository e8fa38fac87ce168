"""Trains the CAM classifier (METHODS §1; variant ``cam``).

Multi-label soft-margin loss on GAP logits; SGD with momentum 0.9, the 1×1 classifier head at
``--head-lr-mult`` × the learning rate, weight decay, poly decay (power 0.9) over all steps
(IRN: lr_t = lr · (1 − t/T)^0.9, applied before step t). Augmentation: random resize of the long
side, flip, normalisation, random crop (`wsss_steps.augment`).

Determinism: with the same settings on the CPU the weights are bitwise the same. The epoch order
and every sample's augmentation are derived from (seed, epoch, index), never from a running RNG
state, so a resumed run continues exactly as an uninterrupted one would.

Resume: with ``--checkpoint-dir``, ``last.pt`` there is written every ``--checkpoint-every``
epochs and after the last one; on start, a ``last.pt`` written with the same settings (hash of
everything that shapes the weights) is continued; any other is ignored and training starts over.

Example:
    python -m wsss_steps.train_classifier --manifest data/manifest/train.csv \\
        --val-manifest data/manifest/val.csv --out model.pt --metrics metrics.csv \\
        --backbone small_resnet --epochs 5 --resize-long 96 160 --crop 128
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss_steps.augment import TrainAugmentation, epoch_permutation, epoch_torch_seed, sample_rng
from wsss_steps.datasets import Manifest, read_manifest
from wsss_steps.image_io import read_image
from wsss_steps.logs import setup_logging
from wsss_steps.networks.backbones import BACKBONES, OUTPUT_STRIDES, build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.io import save_classifier
from wsss_steps.preprocess import normalize_image, resolve_device
from wsss_steps.training import (
    POLY_POWER,
    add_checkpoint_arguments,
    add_run_arguments,
    close_epoch,
    poly_lr_factor,
    resume_training,
    seed_worker,
    set_bn_frozen,
    settings_hash,
    write_csv,
)

log = logging.getLogger("wsss_steps.train_classifier")

VARIANTS: tuple[str, ...] = ("cam",)
MOMENTUM = 0.9
METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_map", "seconds")
SUMMARY_COLUMNS = ("dataset", "stage", "method", "classifier", "split", "metric", "value")


class ClassificationDataset(Dataset):
    """Images of a manifest with their label vectors.

    With an augmentation, sample ``index`` of epoch ``e`` (set by `set_epoch`) is augmented with
    ``sample_rng(seed, e, index)``; without one, the whole image is only normalised.
    Items: (image float32 (3, H, W), labels float32 (C,), index).
    """

    def __init__(self, manifest: Manifest, augmentation: TrainAugmentation | None = None, seed: int = 0):
        self.manifest = manifest
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self.labels = manifest.label_matrix().astype(np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.manifest.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = read_image(self.manifest.records[index].image_path)
        if self.augmentation is None:
            array = normalize_image(image)
        else:
            array = self.augmentation(image, sample_rng(self.seed, self.epoch, index))["image"]
        return torch.from_numpy(array), torch.from_numpy(self.labels[index]), index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsss_steps.train_classifier",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("files")
    io.add_argument("--manifest", required=True, type=Path, help="training split manifest CSV")
    io.add_argument("--val-manifest", type=Path, help="validation split manifest CSV (mAP per epoch)")
    io.add_argument("--out", required=True, type=Path, help="the trained classifier (.pt)")
    io.add_argument("--metrics", type=Path, help="CSV with one row per epoch")
    io.add_argument("--summary", type=Path,
                    help="long-form CSV rows of the final val mAP and per-class AP (needs --val-manifest)")
    add_checkpoint_arguments(io)
    net = parser.add_argument_group("network")
    net.add_argument("--variant", choices=VARIANTS, default="cam", help="training variant (default: %(default)s)")
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
    run = add_run_arguments(parser)
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
    if args.checkpoint_every < 1:
        problems.append(f"--checkpoint-every must be ≥ 1, not {args.checkpoint_every}")
    if args.stop_after_epochs is not None and (args.stop_after_epochs < 1 or args.checkpoint_dir is None):
        problems.append("--stop-after-epochs needs a value ≥ 1 and --checkpoint-dir")
    if args.summary and not args.val_manifest:
        problems.append("--summary needs --val-manifest")
    if args.seed < 0:
        problems.append(f"--seed must be ≥ 0, not {args.seed}")
    if problems:
        raise SystemExit("train_classifier: " + "; ".join(problems))


def training_settings(args: argparse.Namespace, manifest: Manifest) -> dict[str, Any]:
    """Everything that shapes the trained weights (not paths of outputs, device or threads)."""
    digest = hashlib.sha256()
    for record in manifest.records:
        digest.update(f"{record.image_id}\t{record.labels}\n".encode())
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
        "train_images": len(manifest.records), "train_digest": digest.hexdigest(),
    }


@torch.no_grad()
def predict_logits(model: CamClassifier, dataset: ClassificationDataset, device: torch.device,
                   batch_size: int, num_workers: int = 0) -> np.ndarray:
    """Image-level logits (N, C) of whole, unaugmented images; consecutive same-size images share
    a batch. The caller sets eval mode."""
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers)
    logits = np.zeros((len(dataset), dataset.labels.shape[1]), dtype=np.float32)
    pending: list[tuple[torch.Tensor, int]] = []

    def flush() -> None:
        images = torch.stack([image for image, _ in pending]).to(device)
        out = model(images).float().cpu().numpy()
        for row, (_, index) in zip(out, pending, strict=True):
            logits[index] = row
        pending.clear()

    for image, _, index in loader:
        if pending and (pending[0][0].shape != image.shape or len(pending) >= batch_size):
            flush()
        pending.append((image, int(index)))
    if pending:
        flush()
    return logits


def evaluate(model: CamClassifier, dataset: ClassificationDataset, device: torch.device,
             batch_size: int, num_workers: int = 0) -> dict[str, Any]:
    """Validation loss, mAP and per-class AP (NaN for classes without a positive image)."""
    from wsss_steps.metrics import average_precision_per_class, mean_average_precision

    logits = predict_logits(model, dataset, device, batch_size, num_workers)
    targets = dataset.labels
    loss = F.multilabel_soft_margin_loss(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    return {"loss": loss, "map": mean_average_precision(logits, targets),
            "ap": average_precision_per_class(logits, targets)}


def _format(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _resolve_defaults(args)
    setup_logging(args.log)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    train_manifest = read_manifest(args.manifest, args.dataset)
    dataset_name = args.dataset or train_manifest.dataset
    val_manifest = read_manifest(args.val_manifest, args.dataset) if args.val_manifest else None
    if val_manifest is not None and val_manifest.class_names != train_manifest.class_names:
        raise SystemExit(f"train_classifier: the class lists of {args.manifest} and {args.val_manifest} differ")
    settings = training_settings(args, train_manifest)
    expected_hash = settings_hash(settings)

    torch.manual_seed(args.seed)
    backbone = build_backbone(args.backbone, args.backbone_weights, args.output_stride, args.pretrained)
    model = CamClassifier(backbone, train_manifest.num_classes).to(device)
    backbone_params, head_params = model.parameter_groups()
    base_lrs = [args.lr, args.lr * args.head_lr_mult]
    optimizer = torch.optim.SGD(
        [{"params": backbone_params, "lr": base_lrs[0]}, {"params": head_params, "lr": base_lrs[1]}],
        lr=args.lr, momentum=MOMENTUM, weight_decay=args.weight_decay)

    augmentation = TrainAugmentation(tuple(args.resize_long), args.crop, flip=True)
    train_set = ClassificationDataset(train_manifest, augmentation, args.seed)
    val_set = ClassificationDataset(val_manifest) if val_manifest is not None else None
    num_images = len(train_set)
    drop_last = num_images >= args.batch_size  # a last batch of 1 would break BatchNorm
    steps_per_epoch = num_images // args.batch_size if drop_last else 1
    total_steps = steps_per_epoch * args.epochs

    checkpoint_path = args.checkpoint_dir / "last.pt" if args.checkpoint_dir else None
    start_epoch, step, history = resume_training(checkpoint_path, expected_hash, settings, model, optimizer,
                                                 args.epochs)
    log.info("training %s (%s, output stride %d, %s) on %d images of %s, %d classes, %d epochs of "
             "%d steps, device %s", args.variant, args.backbone, args.output_stride,
             "ImageNet init" if args.pretrained else "random init", num_images, dataset_name,
             train_manifest.num_classes, args.epochs, steps_per_epoch, device)

    last_eval: dict[str, Any] | None = None
    epochs_this_run = 0
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        torch.manual_seed(epoch_torch_seed(args.seed, epoch))
        train_set.set_epoch(epoch)
        order = epoch_permutation(args.seed, epoch, num_images).tolist()
        loader = DataLoader(
            train_set, batch_size=args.batch_size, sampler=order, drop_last=drop_last,
            num_workers=args.num_workers, worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(epoch_torch_seed(args.seed, epoch)),
            pin_memory=device.type == "cuda")
        model.train()
        if args.freeze_bn:
            set_bn_frozen(model)
        loss_sum, batches = 0.0, 0
        progress = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                        unit="batch", leave=False, mininterval=1.0)
        for images, labels, _ in progress:
            factor = poly_lr_factor(step, total_steps)
            for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base_lr * factor
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = F.multilabel_soft_margin_loss(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item()
            batches += 1
            progress.set_postfix(loss=f"{loss.item():.4f}")
        progress.close()
        if not math.isfinite(loss_sum):
            raise RuntimeError(f"training loss is not finite in epoch {epoch + 1}; lower --lr")
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                               "lr": f"{optimizer.param_groups[0]['lr']:.6g}",
                               "train_loss": _format(loss_sum / max(batches, 1))}
        if val_set is not None:
            model.eval()
            last_eval = evaluate(model, val_set, device, args.batch_size, args.num_workers)
            row.update(val_loss=_format(last_eval["loss"]), val_map=_format(last_eval["map"]))
        row["seconds"] = f"{time.perf_counter() - started:.2f}"
        history.append(row)
        log.info("epoch %d/%d: train loss %s, val loss %s, val mAP %s, lr %s, %s s", epoch + 1,
                 args.epochs, row["train_loss"], row.get("val_loss", "-") or "-",
                 row.get("val_map", "-") or "-", row["lr"], row["seconds"])
        epochs_this_run += 1
        if close_epoch(name="train_classifier", epoch=epoch, epochs=args.epochs, epochs_this_run=epochs_this_run,
                       step=step, stop_after_epochs=args.stop_after_epochs, checkpoint_path=checkpoint_path,
                       checkpoint_every=args.checkpoint_every, expected_hash=expected_hash, settings=settings,
                       model=model, optimizer=optimizer, history=history,
                       metrics_path=Path(args.metrics) if args.metrics else None, metric_columns=METRIC_COLUMNS):
            return 0

    model.eval()
    if val_set is not None and last_eval is None:
        last_eval = evaluate(model, val_set, device, args.batch_size, args.num_workers)
    if args.metrics:
        write_csv(args.metrics, METRIC_COLUMNS, history)
    meta = {
        "variant": args.variant, "class_names": list(train_manifest.class_names),
        "dataset": dataset_name, "name": args.name, "training": settings, "epochs_trained": args.epochs,
        "val_map": last_eval["map"] if last_eval is not None else None,
    }
    save_classifier(args.out, model.cpu(), meta)
    if args.summary and last_eval is not None:
        rows = [{"metric": "map", "value": _format(last_eval["map"])}]
        rows += [{"metric": f"ap/{name}", "value": _format(float(ap))}
                 for name, ap in zip(train_manifest.class_names, last_eval["ap"], strict=True)]
        for row in rows:
            row.update(dataset=dataset_name, stage="classifier", method=args.variant,
                       classifier=args.name, split="val")
        write_csv(args.summary, SUMMARY_COLUMNS, rows)
    log.info("wrote %s%s", args.out, f" (val mAP {last_eval['map']:.4f})" if last_eval else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
