"""Saliency-network training data (docs/methods.md §4): C²AM-H's hints from a seeds file, and the
polarity check of a trained C²AM over the training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import Manifest
from wsss_steps.methods.saliency import border_foreground_fraction, hint_mask
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.saliency import SaliencyNet
from wsss_steps.store.maps import MapReader
from wsss_steps.training.segmentation import MaskError


class HintSource:
    """Each training image's hints (H, W) uint8: 1 where its highest seed ≥ ``threshold``, else
    0; all 0 without a seeds file (C²AM). The seeds must cover every image of the manifest."""

    def __init__(self, manifest: Manifest, seeds_path: Path | None, threshold: float, map_name: str = "cam"):
        self.manifest = manifest
        self.seeds_path = seeds_path
        self.threshold = threshold
        self.map_name = map_name
        self._reader: MapReader | None = None
        if seeds_path is not None:
            with MapReader(seeds_path) as reader:
                reader.require(manifest.ids)

    def read(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        if self.seeds_path is None:
            return np.zeros(shape, dtype=np.uint8)
        if self._reader is None:
            self._reader = MapReader(self.seeds_path)
        record = self.manifest.records[index]
        data = self._reader.read(record.image_id, [self.map_name])
        hints = hint_mask(data[self.map_name], self.threshold)
        if hints.shape != shape:
            raise MaskError(f"image {record.image_id!r}: seeds in {self.seeds_path} are {hints.shape}, "
                            f"the image is {shape}")
        return hints


@torch.no_grad()
def border_fractions(model: SaliencyNet, manifest: Manifest, device: torch.device) -> np.ndarray:
    """The polarity check's border foreground fraction of P (before any flip) on every training
    image at its own size, in manifest order."""
    was_training = model.training
    model.eval()
    fractions = []
    for record in manifest.records:
        logits, _ = model(image_to_tensor(read_image(record.image_path), device))
        fractions.append(border_foreground_fraction(torch.sigmoid(logits[0, 0]).cpu()))
    model.train(was_training)
    return np.asarray(fractions)
