"""Trains IRN's inter-pixel relation (boundary) branch from affinity labels (docs/methods.md §5).

The backbone is frozen (eval mode, no gradient); only the boundary branch learns
(`wsss_steps.networks.relation.RelationNet`). As in IRN (``net/resnet50_irn.py``: an
ImageNet-pretrained ResNet-50 with strides 2, 2, 2, 1, never the CAM network), ``--backbone`` names
an ImageNet backbone, by default at output stride 16, whose pretrained weights come from
``--backbone-weights`` or the local cache (never a download). ``--backbone classifier`` reads the
trained classifier's backbone instead (the project's earlier design); on the default dataset the
random-init classifier's features, learnt for image labels, mark object boundaries poorly and the
walk spreads seeds over the background (docs/results.md, "Pseudo masks on the earlier default data", has the measurement).

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
from wsss_steps.networks.backbones import BACKBONES, OUTPUT_STRIDES, Backbone, build_backbone
from wsss_steps.networks.io import load_classifier
from wsss_steps.networks.relation import (
    RelationNet,
    affinity_loss,
    boundary_to_affinity,
    path_index,
    save_relation,
)
from wsss_steps.store.digests import file_digest
from wsss_steps.training.loop import Trainee, steps_per_epoch, train
from wsss_steps.training.relation import RelationDataset, labels_digest
from wsss_steps.training.schedules import POLY_POWER

log = logging.getLogger("wsss_steps.train_relation")

METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "bg_pos", "fg_pos", "neg", "seconds")








def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    io = parser.add_argument_group("files")
    io.add_argument("--classifier", type=Path,
                    help="trained classifier: checks the class names; with --backbone classifier its "
                         "backbone is the one used")
    io.add_argument("--labels", required=True, type=Path, help="merged affinity label file (affinity_labels)")
    io.add_argument("--manifest", required=True, type=Path, help="training split manifest CSV")
    io.add_argument("--out", required=True, type=Path, help="the trained relation network (.pt)")
    io.add_argument("--metrics", type=Path, help="CSV with one row per epoch")
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
    add_checkpoint_arguments(parser)
    run = add_run_arguments(parser, training=True)
    run.add_argument("--dataset", default="", help="dataset name (default: from the manifest)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    problems = check_checkpoint(args)
    for name in ("epochs", "batch_size", "crop", "width", "groups"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be ≥ 1, not {getattr(args, name)}")
    if args.radius < 2:
        problems.append(f"--radius must be ≥ 2, not {args.radius}")
    if not 0 < args.rescale[0] <= args.rescale[1]:
        problems.append(f"--rescale needs 0 < MIN <= MAX, not {args.rescale}")
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
        "class_names": list(manifest.class_names), "train_digest": manifest.content_digest(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    device = start_run(args)
    manifest = read_manifest(args.manifest, args.dataset)
    backbone, backbone_source = relation_backbone(args, manifest)
    stages = args.stages if args.stages is not None else list(range(len(backbone.stage_channels)))
    settings = training_settings(args, manifest, stages, backbone_source)

    torch.manual_seed(args.seed)
    model = RelationNet(backbone, stages, args.width, args.groups).to(device)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    index = path_index(args.radius)
    dataset = RelationDataset(manifest, args.labels, tuple(args.rescale), args.crop, args.seed)
    log.info("training the relation branch on %s stages %s of %d images, radius %d, %d epochs of %d "
             "steps, device %s", backbone.name, stages, len(dataset), args.radius, args.epochs,
             steps_per_epoch(len(dataset), args.batch_size), device)

    def step(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], global_step: int
             ) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels, _ = batch
        boundary = torch.sigmoid(model(images.to(device, non_blocking=True))[:, 0])
        loss, parts = affinity_loss(boundary_to_affinity(boundary, index), labels.to(device, non_blocking=True),
                                    index)
        return loss, {key: parts[key] for key in ("bg_pos", "fg_pos", "neg")}

    trainee = Trainee(model, optimizer, [args.lr], dataset, step)
    plan = loop_settings(args, "train_relation", device, settings, METRIC_COLUMNS)
    outcome = train(trainee, plan)
    if not outcome.finished:
        return 0
    history = outcome.history
    meta = {"class_names": list(manifest.class_names), "dataset": args.dataset or manifest.dataset,
            "radius": args.radius, "training": settings, "settings_hash": outcome.settings_hash,
            "epochs_trained": args.epochs, "final_loss": history[-1]["loss"] if history else None}
    save_relation(args.out, model.cpu().eval(), meta)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
