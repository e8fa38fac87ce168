"""Relation-network training data (docs/methods.md §5): augmented images with their stride-4 affinity
labels, and the digest of those labels (part of the network's identity)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import Manifest
from wsss_steps.store.maps import MapReader
from wsss_steps.training.augment import TrainAugmentation, sample_rng

LABEL_MAP = "affinity_label"


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
