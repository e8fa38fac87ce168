"""Trains IRN's inter-pixel relation (boundary) branch from affinity labels (METHODS §5).

The backbone is frozen (eval mode, no gradient); only the boundary branch learns
(`wsss_steps.networks.relation.RelationNet`). As in IRN (``net/resnet50_irn.py``: an
ImageNet-pretrained ResNet-50 with strides 2, 2, 2, 1, never the CAM network), ``--backbone`` names
an ImageNet backbone, by default at output stride 16, whose pretrained weights come from
``--backbone-weights`` or the local cache (never a download). ``--backbone classifier`` reads the
trained classifier's backbone instead (the project's earlier design); on the default dataset the
random-init classifier's features, learnt for image labels, mark object boundaries poorly and the
walk spreads seeds over the background (README, "Pseudo masks", has the measurement).

Each sample: the image and its ``affinity_label`` map are randomly rescaled by a factor in
``--rescale`` (0.5–1.5), flipped and cropped to ``--crop`` (label padding 255), the label is taken at stride 4 (every 4th pixel: the
centre of the network's stride-4 cell; IRN's nearest-neighbour ×0.25 resize), and the pairs within
``--radius`` 10 are positive when their labels agree (background and foreground counted apart),
negative when they differ, ignored when one is 255. Loss (bg_pos/2 + fg_pos/2 + neg)/2 with
−log a and −log(1 − a), a = 1 − max of the boundary map on the pair's segment.

Optimiser: SGD, poly decay (power 0.9) over all steps, weight decay 1e-4, lr 0.1 on the branch.
IRN's ``PolyOptimizer`` passes its weight decay where SGD expects the momentum, so IRN trains with
momentum 1e-4, i.e. none: ``--momentum`` defaults to 0. Recipe defaults are IRN's (3 epochs, batch
32, crop 512); the config of the generated dataset sets CPU-sized values.

Determinism, checkpoints and resume are as in `wsss_steps.train_classifier`: augmentation from
(seed, epoch, index), ``last.pt`` in ``--checkpoint-dir`` every ``--checkpoint-every`` epochs,
continued only when written with the same settings (backbone weights and affinity labels
included, by content digest), ``--stop-after-epochs`` for time-limited jobs.

Example::

    python -m wsss_steps.train_relation --backbone efficientnet_lite0 \\
        --classifier results/synth/classifier/cam/model.pt \\
        --labels results/synth/affinity_labels/cam/cam/maps.h5 \\
        --manifest results/synth/data/train.csv --out relation.pt --epochs 3 --batch-size 16 --crop 128
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
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss_steps.augment import TrainAugmentation, epoch_permutation, epoch_torch_seed, sample_rng
from wsss_steps.datasets import Manifest, read_manifest
from wsss_steps.image_io import read_image
from wsss_steps.logs import setup_logging
from wsss_steps.map_store import MapReader
from wsss_steps.networks.backbones import BACKBONES, OUTPUT_STRIDES, Backbone, build_backbone
from wsss_steps.networks.io import load_classifier
from wsss_steps.networks.relation import (
    RelationNet,
    affinity_loss,
    boundary_to_affinity,
    path_index,
    save_relation,
)
from wsss_steps.preprocess import resolve_device
from wsss_steps.training import (
    POLY_POWER,
    add_checkpoint_arguments,
    add_run_arguments,
    close_epoch,
    poly_lr_factor,
    resume_training,
    seed_worker,
    settings_hash,
    write_csv,
)

log = logging.getLogger("wsss_steps.train_relation")

LABEL_MAP = "affinity_label"
METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "bg_pos", "fg_pos", "neg", "seconds")


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def labels_digest(labels_path: str | Path, manifest: Manifest) -> str:
    """Digest of every image's affinity labels, in manifest order (the labels' content, not paths)."""
    digest = hashlib.sha256()
    with MapReader(labels_path) as reader:
        reader.require(manifest.ids)
        for image_id in manifest.ids:
            label = np.ascontiguousarray(reader.read(image_id, [LABEL_MAP])[LABEL_MAP])
            digest.update(f"{image_id}\t{label.shape}\n".encode())
            digest.update(label.tobytes())
    return digest.hexdigest()


class RelationDataset(Dataset):
    """Augmented images and their stride-4 affinity labels; sample ``index`` of epoch ``e`` uses
    ``sample_rng(seed, e, index)``. Items: (image float32 (3, crop, crop), label int64
    (⌈crop/4⌉, ⌈crop/4⌉), index)."""

    def __init__(self, manifest: Manifest, labels_path: str | Path, rescale: tuple[float, float],
                 crop: int, seed: int = 0):
        self.manifest = manifest
        self.labels_path = Path(labels_path)
        self.rescale = rescale
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self._reader: MapReader | None = None  # opened lazily: one handle per worker process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.manifest.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self._reader is None:
            self._reader = MapReader(self.labels_path)
        record = self.manifest.records[index]
        image = read_image(record.image_path)
        label = self._reader.read(record.image_id, [LABEL_MAP])[LABEL_MAP]
        if label.shape != image.shape[:2]:
            raise ValueError(f"affinity labels of {record.image_id!r} in {self.labels_path} are "
                             f"{label.shape}, the image is {image.shape[:2]}")
        # IRN's random rescale of the image by s ∈ rescale is a random long side in
        # [s_min·L, s_max·L]: the shared augmentation with that range.
        long_side = max(image.shape[:2])
        low = max(1, round(self.rescale[0] * long_side))
        high = max(low, round(self.rescale[1] * long_side))
        augment = TrainAugmentation((low, high), self.crop, flip=True)
        out = augment(image, sample_rng(self.seed, self.epoch, index), label)
        stride4 = np.ascontiguousarray(out["label"][::4, ::4]).astype(np.int64)
        return torch.from_numpy(out["image"]), torch.from_numpy(stride4), index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wsss_steps.train_relation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("files")
    io.add_argument("--classifier", type=Path,
                    help="trained classifier: checks the class names; with --backbone classifier its "
                         "backbone is the one used")
    io.add_argument("--labels", required=True, type=Path, help="merged affinity label file (affinity_labels)")
    io.add_argument("--manifest", required=True, type=Path, help="training split manifest CSV")
    io.add_argument("--out", required=True, type=Path, help="the trained relation network (.pt)")
    io.add_argument("--metrics", type=Path, help="CSV with one row per epoch")
    add_checkpoint_arguments(io)
    net = parser.add_argument_group("network")
    net.add_argument("--backbone", choices=("classifier", *[b for b in BACKBONES if b != "small_resnet"]),
                     default="resnet50",
                     help="frozen ImageNet backbone (IRN: resnet50), or the classifier's (default: %(default)s)")
    net.add_argument("--backbone-weights", type=Path,
                     help="local ImageNet weights file (default: the torchvision cache; efficientnet_lite0: "
                          "the file its package ships)")
    net.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES, default=16,
                     help="output stride of an ImageNet backbone (IRN: 16; default: %(default)s)")
    net.add_argument("--stages", type=int, nargs="+", help="backbone stages read (default: all)")
    net.add_argument("--width", type=int, default=32, help="channels per stage branch (default: %(default)s)")
    net.add_argument("--groups", type=int, default=4, help="GroupNorm groups (default: %(default)s)")
    net.add_argument("--radius", type=int, default=10, help="pair radius at stride 4 (default: %(default)s)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=3, help="(default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    train.add_argument("--lr", type=float, default=0.1, help="learning rate before poly decay (default: %(default)s)")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="(default: %(default)s)")
    train.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: %(default)s, as IRN)")
    train.add_argument("--crop", type=int, default=512, help="square crop size (default: %(default)s)")
    train.add_argument("--rescale", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.5, 1.5),
                       help="random image scale factor range (default: 0.5 1.5)")
    train.add_argument("--seed", type=int, default=0, help="seeds the init, epoch order and augmentation")
    run = add_run_arguments(parser)
    run.add_argument("--dataset", default="", help="dataset name (default: from the manifest)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    problems = []
    for name in ("epochs", "batch_size", "checkpoint_every", "crop", "width", "groups"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be ≥ 1, not {getattr(args, name)}")
    if args.radius < 2:
        problems.append(f"--radius must be ≥ 2, not {args.radius}")
    if not 0 < args.rescale[0] <= args.rescale[1]:
        problems.append(f"--rescale needs 0 < MIN <= MAX, not {args.rescale}")
    if args.stop_after_epochs is not None and (args.stop_after_epochs < 1 or args.checkpoint_dir is None):
        problems.append("--stop-after-epochs needs a value ≥ 1 and --checkpoint-dir")
    if args.backbone == "classifier" and args.classifier is None:
        problems.append("--backbone classifier needs --classifier")
    if problems:
        raise SystemExit("train_relation: " + "; ".join(problems))


def relation_backbone(args: argparse.Namespace, manifest: Manifest) -> tuple[Backbone, str]:
    """The frozen backbone and a digest of its weights' source (the classifier file or ImageNet)."""
    if args.classifier is not None:
        classifier, classifier_meta = load_classifier(args.classifier, "cpu")
        if tuple(classifier_meta.get("class_names", manifest.class_names)) != manifest.class_names:
            raise SystemExit(f"train_relation: classifier {args.classifier} was trained on classes "
                             f"{classifier_meta['class_names']}, manifest {args.manifest} has "
                             f"{list(manifest.class_names)}")
        if args.backbone == "classifier":
            return classifier.backbone, file_digest(args.classifier)
    backbone = build_backbone(args.backbone, args.backbone_weights, args.output_stride, pretrained=True)
    state = backbone.state_dict()
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return backbone, f"{args.backbone}/os{args.output_stride}/{digest.hexdigest()}"


def training_settings(args: argparse.Namespace, manifest: Manifest, stages: Sequence[int],
                      backbone_source: str) -> dict[str, Any]:
    """Everything that shapes the trained weights (not output paths, device or threads)."""
    return {
        "kind": "relation", "backbone": backbone_source,
        "labels": labels_digest(args.labels, manifest), "stages": list(stages), "width": args.width,
        "groups": args.groups, "radius": args.radius, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "weight_decay": args.weight_decay, "momentum": args.momentum,
        "poly_power": POLY_POWER, "crop": args.crop, "rescale": list(args.rescale), "seed": args.seed,
        "class_names": list(manifest.class_names), "train_ids": hashlib.sha256(
            "\n".join(manifest.ids).encode()).hexdigest(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    setup_logging(args.log)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    manifest = read_manifest(args.manifest, args.dataset)
    backbone, backbone_source = relation_backbone(args, manifest)
    stages = args.stages if args.stages is not None else list(range(len(backbone.stage_channels)))
    settings = training_settings(args, manifest, stages, backbone_source)
    expected_hash = settings_hash(settings)

    torch.manual_seed(args.seed)
    model = RelationNet(backbone, stages, args.width, args.groups).to(device)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    index = path_index(args.radius)
    dataset = RelationDataset(manifest, args.labels, tuple(args.rescale), args.crop, args.seed)
    num_images = len(dataset)
    drop_last = num_images >= args.batch_size
    steps_per_epoch = num_images // args.batch_size if drop_last else 1
    total_steps = steps_per_epoch * args.epochs

    checkpoint_path = args.checkpoint_dir / "last.pt" if args.checkpoint_dir else None
    start_epoch, step, history = resume_training(checkpoint_path, expected_hash, settings, model, optimizer,
                                                 args.epochs)
    log.info("training the relation branch on %s stages %s of %d images, radius %d, %d epochs of %d "
             "steps, device %s", backbone.name, stages, num_images, args.radius, args.epochs,
             steps_per_epoch, device)

    epochs_this_run = 0
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        torch.manual_seed(epoch_torch_seed(args.seed, epoch))
        dataset.set_epoch(epoch)
        order = epoch_permutation(args.seed, epoch, num_images).tolist()
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=order, drop_last=drop_last,
                            num_workers=args.num_workers, worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(epoch_torch_seed(args.seed, epoch)),
                            pin_memory=device.type == "cuda")
        model.train()
        sums = {"loss": 0.0, "bg_pos": 0.0, "fg_pos": 0.0, "neg": 0.0}
        batches = 0
        progress = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                        unit="batch", leave=False, mininterval=1.0)
        for images, labels, _ in progress:
            for group in optimizer.param_groups:
                group["lr"] = args.lr * poly_lr_factor(step, total_steps)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            boundary = torch.sigmoid(model(images)[:, 0])
            loss, parts = affinity_loss(boundary_to_affinity(boundary, index), labels, index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            batches += 1
            sums["loss"] += loss.item()
            for key in ("bg_pos", "fg_pos", "neg"):
                sums[key] += parts[key]
            progress.set_postfix(loss=f"{loss.item():.4f}")
        progress.close()
        if not math.isfinite(sums["loss"]):
            raise RuntimeError(f"relation loss is not finite in epoch {epoch + 1}; lower --lr")
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": f"{optimizer.param_groups[0]['lr']:.6g}"}
        row.update({k: f"{v / max(batches, 1):.6g}" for k, v in sums.items()})
        row["seconds"] = f"{time.perf_counter() - started:.2f}"
        history.append(row)
        log.info("epoch %d/%d: loss %s (bg_pos %s, fg_pos %s, neg %s), lr %s, %s s", epoch + 1, args.epochs,
                 row["loss"], row["bg_pos"], row["fg_pos"], row["neg"], row["lr"], row["seconds"])
        epochs_this_run += 1
        if close_epoch(name="train_relation", epoch=epoch, epochs=args.epochs, epochs_this_run=epochs_this_run,
                       step=step, stop_after_epochs=args.stop_after_epochs, checkpoint_path=checkpoint_path,
                       checkpoint_every=args.checkpoint_every, expected_hash=expected_hash, settings=settings,
                       model=model, optimizer=optimizer, history=history,
                       metrics_path=Path(args.metrics) if args.metrics else None, metric_columns=METRIC_COLUMNS):
            return 0

    if args.metrics:
        write_csv(args.metrics, METRIC_COLUMNS, history)
    meta = {"class_names": list(manifest.class_names), "dataset": args.dataset or manifest.dataset,
            "radius": args.radius, "training": settings, "settings_hash": expected_hash,
            "epochs_trained": args.epochs, "final_loss": history[-1]["loss"] if history else None}
    save_relation(args.out, model.cpu().eval(), meta)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
