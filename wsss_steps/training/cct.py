"""Cross-consistency training (docs/methods.md §10): paired labelled / unlabelled samples, the
consistency and weak losses, and the ramp-up of their weights.

Each item pairs an unlabelled image (with its pseudo mask as weak label, or no label: all 255)
with a labelled one (its ground truth): an epoch visits every unlabelled image once and cycles the
labelled images (CCT: ``zip(cycle(supervised_loader), unsupervised_loader)``), in an order drawn
per (seed, epoch), so any item is a function of (seed, epoch, index) as the training loop needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss_steps.data.images import IGNORE_LABEL, read_label_mask
from wsss_steps.data.manifest import Manifest
from wsss_steps.training.augment import TrainAugmentation, epoch_permutation, sample_rng
from wsss_steps.training.segmentation import (
    LabelSource,
    MaskError,
    SegmentationDataset,
    checked_label_mask,
)

# CCT's configs/config.json: unsupervised_w, weakly_loss_w, ramp_up (of the training).
UNSUPERVISED_WEIGHT = 30.0
WEAK_WEIGHT = 0.4
RAMPUP = 0.1
# Spawn keys of this module's draws (sample_rng and epoch_permutation use 0 and 1 with the seed).
_LABELLED_ORDER_KEY = 1_000_003


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """CCT's ramp: exp(−5 (1 − t)²), t = min(step, rampup_steps) / rampup_steps; 1 without a ramp."""
    if rampup_steps <= 0:
        return 1.0
    phase = 1.0 - min(max(step, 0), rampup_steps) / rampup_steps
    return math.exp(-5.0 * phase * phase)


def consistency_weights(step: int, total_steps: int, unsupervised_weight: float = UNSUPERVISED_WEIGHT,
                        weak_weight: float = WEAK_WEIGHT, rampup: float = RAMPUP) -> tuple[float, float]:
    """(ω_u, ω_w) at ``step``: ω_u = unsupervised_weight × ramp over the first ``rampup`` of the
    steps; ω_w = weak_weight × the same ramp (CCT: weight_u / final_w × weakly_loss_w)."""
    ramp = sigmoid_rampup(step, round(rampup * total_steps))
    return unsupervised_weight * ramp, weak_weight * ramp


def softmax_mse(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """CCT's consistency d: mean over every element of (softmax(logits) − target)²."""
    return F.mse_loss(F.softmax(logits, dim=1), target_probs, reduction="mean")


def weak_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a weak label, mean over the labelled pixels (255 ignored); 0 where all
    are ignored (no NaN, and no wait for the device to find out)."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / (labels != IGNORE_LABEL).sum().clamp(min=1)


class SubsetGroundTruth:
    """Ground truth on the labelled images, no label (all 255) on the others: CCT without weak labels."""

    def __init__(self, manifest: Manifest, labelled_ids: Sequence[str], num_labels: int | None = None):
        self.manifest = manifest
        self.labelled = frozenset(labelled_ids)
        self.num_labels = manifest.num_classes + 1 if num_labels is None else num_labels
        unknown = sorted(self.labelled - set(manifest.ids))
        if unknown:
            raise MaskError(f"{len(unknown)} ground-truth subset id(s) are not images of {manifest.split}, "
                            f"e.g. {unknown[:5]}")
        missing = [r.image_id for r in manifest.records if r.image_id in self.labelled and r.mask_path is None]
        if missing:
            raise MaskError(f"the ground-truth subset: {len(missing)} image(s) of {manifest.split} have no mask, "
                            f"e.g. {missing[:5]}")

    def read(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        record = self.manifest.records[index]
        if record.image_id not in self.labelled:
            return np.full(shape, IGNORE_LABEL, np.uint8)
        return checked_label_mask(read_label_mask(record.mask_path), record.image_id, str(record.mask_path), shape,
                                  self.num_labels)


class CCTDataset(SegmentationDataset):
    """Items (labelled image, its mask, unlabelled image, its weak label), each (3, crop, crop)
    float32 / (crop, crop) int64; ``len`` = the unlabelled images. ``masks`` gives the labelled
    images' ground truth and the others' weak labels (pseudo masks or all 255)."""

    def __init__(self, manifest: Manifest, masks: LabelSource, labelled_ids: Sequence[str],
                 augmentation: TrainAugmentation, seed: int = 0, cache: bool = False):
        super().__init__(manifest, masks, augmentation, seed, cache)
        labelled = set(labelled_ids)
        self.labelled = [i for i, r in enumerate(manifest.records) if r.image_id in labelled]
        self.unlabelled = [i for i, r in enumerate(manifest.records) if r.image_id not in labelled]
        if not self.labelled or not self.unlabelled:
            raise MaskError(f"CCT needs labelled and unlabelled images: {len(self.labelled)} of the "
                            f"{len(manifest.records)} images of {manifest.split} are in the ground-truth subset")

    def __len__(self) -> int:
        return len(self.unlabelled)

    def labelled_index(self, index: int) -> int:
        """The labelled image paired with item ``index`` this epoch (each cycled about equally)."""
        order = epoch_permutation(self.seed + _LABELLED_ORDER_KEY, self.epoch, len(self.labelled))
        return self.labelled[int(order[index % len(self.labelled)])]

    def _sample(self, record_index: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.image_and_mask(record_index)
        # stream 0: the unlabelled image's draw (as SegmentationDataset's for that index), 1: the labelled one's.
        rng = sample_rng(self.seed, self.epoch, record_index + stream * len(self.manifest.records))
        out = self.augmentation(image, rng, mask)
        return torch.from_numpy(out["image"]), torch.from_numpy(out["label"].astype(np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        image_l, label_l = self._sample(self.labelled_index(index), 1)
        image_u, label_u = self._sample(self.unlabelled[index], 0)
        return image_l, label_l, image_u, label_u
