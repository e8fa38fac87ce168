"""Classifier training data and validation (docs/methods.md §1): images with label vectors, logits of
whole images, validation loss, mAP and per-class AP. The variants' losses are
`wsss_steps.training.variants`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import Manifest
from wsss_steps.evaluation.metrics import average_precision_per_class, mean_average_precision
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.inputs import normalize_image
from wsss_steps.training.augment import TrainAugmentation, sample_rng


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


class TripletDataset(Dataset):
    """Triplets of single-label images (docs/methods.md §8, method II): item ``index`` is the anchor
    ``index``, a positive (another image of its class; itself where the class has no other) and a
    negative (an image of another class), drawn from (seed, epoch, index) apart from the
    augmentation's stream; each image augmented as in `ClassificationDataset`.
    Items: (anchor, positive, negative) float32 (3, H, W) each."""

    def __init__(self, manifest: Manifest, augmentation: TrainAugmentation | None = None, seed: int = 0):
        several = [r.image_id for r in manifest.records if len(r.labels) != 1]
        if several:
            raise ValueError(f"triplets need one class per image; {len(several)} image(s) of {manifest.split} "
                             f"have several, e.g. {several[:5]}")
        self.images = ClassificationDataset(manifest, augmentation, seed)
        self.classes = np.array([r.labels[0] for r in manifest.records])
        self.by_class = {int(c): np.flatnonzero(self.classes == c) for c in np.unique(self.classes)}
        if len(self.by_class) < 2:
            raise ValueError(f"triplets need images of two classes at least; {manifest.split} has one")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.images.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def partners(self, index: int) -> tuple[int, int]:
        """(positive, negative) of anchor ``index`` in this epoch."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2, self.epoch, index)))
        own = self.by_class[int(self.classes[index])]
        others = own[own != index]
        positive = int(rng.choice(others)) if others.size else index
        negative = int(rng.choice(np.flatnonzero(self.classes != self.classes[index])))
        return positive, negative

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positive, negative = self.partners(index)
        return tuple(self.images[i][0] for i in (index, positive, negative))  # type: ignore[return-value]


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


def evaluate_classifier(model: CamClassifier, dataset: ClassificationDataset, device: torch.device,
             batch_size: int, num_workers: int = 0, loss: str = "multilabel") -> dict[str, Any]:
    """Validation loss, mAP and per-class AP (NaN for classes without a positive image); with
    ``loss`` softmax (one class per image) the cross-entropy and the top-1 accuracy."""

    logits = predict_logits(model, dataset, device, batch_size, num_workers)
    targets = dataset.labels
    result: dict[str, Any] = {"map": mean_average_precision(logits, targets),
                              "ap": average_precision_per_class(logits, targets)}
    if loss == "softmax":
        classes = targets.argmax(axis=1)
        result["loss"] = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(classes)).item()
        result["top1"] = float(np.mean(logits.argmax(axis=1) == classes))
    else:
        result["loss"] = F.multilabel_soft_margin_loss(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    return result


def require_single_label(manifest: Manifest, what: str) -> None:
    """Refuses a manifest with an image of more than one class (a softmax classifier's data)."""
    several = [r.image_id for r in manifest.records if len(r.labels) != 1]
    if several:
        raise ValueError(f"{what}: {len(several)} image(s) of split {manifest.split!r} have more than one class "
                         f"(first: {several[:5]}); a softmax classifier needs one class per image (the WSOL "
                         "images: see wsol.images)")


def format_metric(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"
