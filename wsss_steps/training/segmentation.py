"""Segmentation-network training data (docs/methods.md §6): each image's label mask from a pseudo-mask
file or the ground truth, augmented pairs, and the class-balanced loss weights."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss_steps.data.images import IGNORE_LABEL, read_image, read_label_mask
from wsss_steps.data.manifest import Manifest
from wsss_steps.store.maps import MapReader
from wsss_steps.training.augment import TrainAugmentation, sample_rng

MASK_NAME = "mask"


class MaskError(ValueError):
    """A training mask that is missing or does not fit its image; the message names the image."""


def checked_label_mask(mask: np.ndarray, image_id: str, source: str, shape: tuple[int, int],
                       num_labels: int) -> np.ndarray:
    """``mask`` when it has the image's ``shape`` and values in 0..num_labels − 1 and 255, else a
    MaskError naming the image and where the mask came from."""
    if mask.shape != shape:
        raise MaskError(f"image {image_id!r}: mask in {source} is {mask.shape}, the image is {shape}")
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(num_labels), IGNORE_LABEL])
    if bad.size:
        raise MaskError(f"image {image_id!r}: mask in {source} holds values {bad.tolist()} outside "
                        f"0..{num_labels - 1} and {IGNORE_LABEL}")
    return mask


class MaskSource:
    """Each training image's label mask: from a pseudo-mask HDF5 file or the ground truth.

    ``ground_truth_ids`` (with a mask file): the semi-supervised setting (docs/methods.md §6, AdvCAM's
    1,464 VOC images with masks + 9,118 with labels only): exactly these images take their
    ground-truth mask, every other image its pseudo mask.
    """

    def __init__(self, manifest: Manifest, masks_path: Path | None, mask_name: str = MASK_NAME,
                 num_labels: int | None = None, ground_truth_ids: Iterable[str] = ()):
        self.manifest = manifest
        self.masks_path = masks_path
        self.mask_name = mask_name  # the dataset read from a mask file (saliency masks: saliency_mask)
        self.num_labels = manifest.num_classes + 1 if num_labels is None else num_labels
        self.ground_truth_ids = frozenset(ground_truth_ids)
        self._reader: MapReader | None = None  # opened lazily: one handle per worker process
        if self.ground_truth_ids and masks_path is None:
            raise ValueError("ground_truth_ids name the images that take ground truth instead of a mask file's")
        unknown = sorted(self.ground_truth_ids - set(manifest.ids))
        if unknown:
            raise MaskError(f"{len(unknown)} ground-truth subset id(s) are not images of {manifest.split}, "
                            f"e.g. {unknown[:5]}")
        if masks_path is not None:
            with MapReader(masks_path) as reader:
                reader.require([i for i in manifest.ids if i not in self.ground_truth_ids])
        ground_truth = [r for r in manifest.records if masks_path is None or r.image_id in self.ground_truth_ids]
        missing = [r.image_id for r in ground_truth if r.mask_path is None]
        if missing:
            what = "--ground-truth" if masks_path is None else "the ground-truth subset"
            raise MaskError(f"{what}: {len(missing)} image(s) of {manifest.split} have no mask, e.g. {missing[:5]}")

    def takes_ground_truth(self, image_id: str) -> bool:
        return self.masks_path is None or image_id in self.ground_truth_ids

    def read(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        record = self.manifest.records[index]
        if self.takes_ground_truth(record.image_id):
            source = str(record.mask_path)
            mask = read_label_mask(record.mask_path)
        else:
            if self._reader is None:
                self._reader = MapReader(self.masks_path)
            source = str(self.masks_path)
            data = self._reader.read(record.image_id)
            if self.mask_name not in data:
                raise MaskError(f"image {record.image_id!r} in {source} has no dataset {self.mask_name!r} "
                                f"(it holds {sorted(data)})")
            mask = np.asarray(data[self.mask_name], dtype=np.uint8)
        return checked_label_mask(mask, record.image_id, source, shape, self.num_labels)


class LabelSource(Protocol):
    """Each training image's label map (H, W) uint8 (255 = ignore): `MaskSource`, C²AM-H's hints."""

    def read(self, index: int, shape: tuple[int, int]) -> np.ndarray: ...


class SegmentationDataset(Dataset):
    """Augmented images and masks; sample ``index`` of epoch ``e`` uses ``sample_rng(seed, e, index)``.
    Items: (image float32 (3, crop, crop), label int64 (crop, crop))."""

    def __init__(self, manifest: Manifest, masks: LabelSource, augmentation: TrainAugmentation, seed: int = 0,
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

    def image_and_mask(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Record ``index``'s image and label map, read once where the images are cached."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image = read_image(self.manifest.records[index].image_path)
        mask = self.masks.read(index, image.shape[:2])
        if self.cache is not None:
            self.cache[index] = (image, mask)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.image_and_mask(index)
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
