"""Training of the weight-map generator g (docs/methods.md §8; `wsss_steps.methods.weight_map`) against a
frozen f, and the choice of its epoch by the early-stopping score S.

Method I: f is the classifier; g's loss is CE(f(I), f(I ⊙ g(I))) + λ‖g(I)‖₁. Method II: f is first
trained with a triplet loss from the classifier's backbone (`train_embedding`; its checkpoints in
``<checkpoint_dir>/embedding``), then frozen; g's loss is L_inner + L_outer + λR. Every epoch's g
is kept (``epoch-NNN.pt``); after each epoch `score_epoch` gives the mean S of the validation
images (and the GT-known accuracy of the paper's box where they have boxes, a diagnostic never
used for the choice), and `train_weight_map` returns g of the epoch with the highest mean S.

The step `wsss_steps.train_weight_map` parses the options, records the settings and writes the
chosen generator.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss_steps.methods.boxes import box_iou
from wsss_steps.methods.weight_map import (
    TRIPLET_MARGIN,
    box_mass_score,
    early_stopping_epoch,
    predict_weight_map,
    weight_map_box,
    weight_map_loss,
    weight_map_triplet_loss,
)
from wsss_steps.networks.io import load_weights_file
from wsss_steps.networks.weight_map import ImageEmbedding, build_weight_map_generator
from wsss_steps.training.classification import ClassificationDataset, TripletDataset
from wsss_steps.training.loop import LoopSettings, Trainee, TrainingResult, set_bn_frozen, train

log = logging.getLogger(__name__)


class StaleEpochFile(ValueError):
    """An ``epoch-NNN.pt`` of g written by a run with other settings."""


@dataclasses.dataclass(frozen=True)
class WeightMapRecipe:
    """What shapes g and (method II) f besides the loop's settings (`LoopSettings`: epochs, batch
    size, seed, device, checkpoints)."""

    method: str = "i"  # "i": CE against the classifier; "ii": triplet-trained f, L_inner + L_outer
    backbone: str = "efficientnet_lite0"  # the U-Net's encoder
    pretrained: bool = True
    backbone_weights: Path | None = None  # local ImageNet weights (default: its package's)
    freeze_bn: bool = True  # keep the encoders' BatchNorm statistics
    l1_weight: float = 1.0  # λ of the L1 term (method II: of R)
    lr: float = 1e-4  # Adam's learning rate for g
    weight_decay: float = 0.0
    margin: float = TRIPLET_MARGIN  # method II
    embedding_epochs: int = 5  # method II: epochs of f's triplet training
    embedding_lr: float = 1e-4  # method II: Adam's learning rate for f


@dataclasses.dataclass
class WeightMapOutcome:
    """g (of the chosen epoch when ``chosen_epoch`` is set; else the run stopped early, as asked
    by ``stop_after_epochs``, and g is not to be written) and the loop's record."""

    generator: nn.Module
    result: TrainingResult
    chosen_epoch: int | None
    scores: list[float]  # mean S per epoch, in order (empty when stopped early)


def train_embedding(classifier: nn.Module, triplets: TripletDataset, plan: LoopSettings,
                    settings: dict[str, Any], recipe: WeightMapRecipe) -> ImageEmbedding:
    """Method II's f: the classifier's backbone trained with the triplet loss, then frozen."""
    if plan.checkpoint_dir is None:
        raise ValueError("method ii keeps f's checkpoints under the checkpoint folder; it needs one")
    embedding = ImageEmbedding(copy.deepcopy(classifier.backbone)).to(plan.device)
    embedding.requires_grad_(True)
    optimizer = torch.optim.Adam(embedding.parameters(), lr=recipe.embedding_lr)

    def train_mode() -> None:
        embedding.train()
        if recipe.freeze_bn:
            set_bn_frozen(embedding.backbone)

    def step(batch: Sequence[torch.Tensor], global_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        anchors, positives, negatives = (embedding(t.to(plan.device, non_blocking=True)) for t in batch)
        return F.triplet_margin_loss(anchors, positives, negatives, margin=recipe.margin), {}

    trainee = Trainee(embedding, optimizer, [recipe.embedding_lr], triplets, step, train_mode=train_mode)
    outcome = train(trainee, dataclasses.replace(
        plan, name=f"{plan.name} embedding", epochs=recipe.embedding_epochs, settings=settings,
        checkpoint_dir=plan.checkpoint_dir / "embedding", stop_after_epochs=None, keep_epoch_weights=False,
        metrics_path=None, metric_columns=("epoch", "step", "lr", "loss", "seconds")))
    log.info("method II: f trained with the triplet loss, last epoch's mean loss %s",
             outcome.history[-1]["loss"] if outcome.history else "(resumed, already complete)")
    embedding.requires_grad_(False)
    return embedding.eval()


def score_epoch(generator: nn.Module, dataset: ClassificationDataset, device: torch.device
                ) -> tuple[float, float]:
    """Mean S over the dataset's images and the GT-known accuracy of the maps' boxes (NaN without boxes)."""
    generator.eval()
    scores, hits, scored = [], 0, 0
    for index, record in enumerate(dataset.manifest.records):
        image, _, _ = dataset[index]
        weight_map = predict_weight_map(generator, image.to(device))
        scores.append(box_mass_score(weight_map))
        gt = [tuple(b)[1:] for b in record.boxes if b.label in record.labels]
        if gt:
            scored += 1
            hits += float(box_iou(weight_map_box(weight_map)[None], np.array(gt)).max()) >= 0.5
    return float(np.mean(scores)), (hits / scored if scored else float("nan"))


def load_epoch(generator: nn.Module, checkpoint_dir: Path, epoch: int, settings_hash: str) -> None:
    """Loads g's weights of ``epoch`` (``epoch-NNN.pt``, written by this run's settings) into ``generator``."""
    epoch_file = checkpoint_dir / f"epoch-{epoch:03d}.pt"
    state = load_weights_file(epoch_file, "weight-map epoch checkpoint")
    if state.get("settings_hash") != settings_hash:
        raise StaleEpochFile(f"{epoch_file} was written with other settings; delete the folder")
    generator.load_state_dict(state["model"])


def train_weight_map(classifier: nn.Module, dataset: ClassificationDataset | TripletDataset,
                     val_set: ClassificationDataset, plan: LoopSettings, recipe: WeightMapRecipe,
                     embedding_settings: dict[str, Any] | None = None) -> WeightMapOutcome:
    """Trains g against the frozen ``classifier`` (method I, on ``dataset``'s images) or against
    method II's f (trained first from the classifier on ``dataset``'s triplets, under
    ``embedding_settings``), scores every epoch on ``val_set`` (the ``val_score`` and
    ``val_gt_known`` of the metrics rows) and loads the epoch of the highest mean S.

    ``plan`` must keep every epoch's weights (``keep_epoch_weights``) in its ``checkpoint_dir``."""
    if plan.checkpoint_dir is None or not plan.keep_epoch_weights:
        raise ValueError("the weight map keeps every epoch's generator for the choice: it needs a checkpoint "
                         "folder and keep_epoch_weights")
    device = plan.device
    embedding = None
    if recipe.method == "ii":
        if not isinstance(dataset, TripletDataset) or embedding_settings is None:
            raise ValueError("method ii trains on triplets (a TripletDataset) and needs f's settings")
        embedding = train_embedding(classifier, dataset, plan, embedding_settings, recipe)
    torch.manual_seed(plan.seed)
    generator = build_weight_map_generator(recipe.backbone, recipe.pretrained, recipe.backbone_weights).to(device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

    def train_mode() -> None:
        generator.train()
        if recipe.freeze_bn:
            set_bn_frozen(generator.encoder)

    def step(batch: tuple[torch.Tensor, ...], global_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if embedding is not None:
            anchors, positives, negatives = (t.to(device, non_blocking=True) for t in batch)
            return weight_map_triplet_loss(embedding, generator, anchors, positives, negatives, recipe.l1_weight,
                                           recipe.margin)
        images = batch[0].to(device, non_blocking=True)
        return weight_map_loss(classifier, generator, images, recipe.l1_weight)

    def validate(epoch: int) -> dict[str, Any]:
        score, gt_known = score_epoch(generator, val_set, device)
        return {"val_score": f"{score:.6g}", "val_gt_known": "" if np.isnan(gt_known) else f"{gt_known:.6g}"}

    trainee = Trainee(generator, optimizer, [recipe.lr], dataset, step, train_mode=train_mode, validate=validate)
    result = train(trainee, plan)
    if not result.finished:
        return WeightMapOutcome(generator, result, None, [])
    scores = [float(row["val_score"]) for row in result.history]
    chosen = early_stopping_epoch(scores)
    load_epoch(generator, plan.checkpoint_dir, chosen, result.settings_hash)
    return WeightMapOutcome(generator, result, chosen, scores)
