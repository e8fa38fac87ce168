"""Training augmentation (docs/methods.md §1, IRN style), deterministic given a numpy Generator.

Order: random resize of the long side to [min, max] px, horizontal flip, colour normalisation,
random crop to ``crop`` × ``crop``. Where the image is smaller than the crop it is placed at a
random offset in a zero-filled square (zero after normalisation = the mean colour); ``valid``
marks the pixels that come from the image. Label masks travel along (nearest-neighbour resize,
padding 255 = ignore).

Each sample draws from its own Generator, ``sample_rng(seed, epoch, index)``, so an augmented
sample depends on nothing but those three numbers (not on worker count, order or resume); the
epoch order comes from ``epoch_permutation(seed, epoch, n)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from wsss_steps.data.images import IGNORE_LABEL
from wsss_steps.networks.inputs import normalize_image


# SeedSequence spawn keys keep the streams apart: (0, epoch, index) for samples, (1, epoch) for the
# epoch order, (2, epoch) for torch's generator. Plain entropy lists would collide ([s, e] and
# [s, e, 0] seed the same stream).
def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation in one epoch."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, epoch, index)))


def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order in which an epoch visits ``size`` samples."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, epoch)))
    return rng.permutation(size)


def epoch_torch_seed(seed: int, epoch: int) -> int:
    """A seed for torch's global generator at the start of an epoch (dropout and the like)."""
    return int(np.random.SeedSequence(seed, spawn_key=(2, epoch)).generate_state(1, np.uint64)[0] >> 1)


def resize_long(image: np.ndarray, long_side: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resizes (H, W[, C]) so that max(H, W) = ``long_side`` (aspect kept, sides ≥ 1)."""
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    return cv2.resize(image, size, interpolation=interpolation)


def crop_offsets(height: int, width: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(image top, image left, container top, container left) of a random ``crop`` square."""
    def axis(size: int) -> tuple[int, int]:
        space = size - crop
        if space > 0:
            return int(rng.integers(space + 1)), 0
        return 0, int(rng.integers(-space + 1))

    image_top, container_top = axis(height)
    image_left, container_left = axis(width)
    return image_top, image_left, container_top, container_left


def crop_with_offsets(array: np.ndarray, crop: int, offsets: tuple[int, int, int, int],
                      fill: float | int, channels_first: bool = False) -> np.ndarray:
    """The ``crop`` × ``crop`` window of (H, W), (H, W, C) or, if ``channels_first``, (C, H, W)."""
    image_top, image_left, container_top, container_left = offsets
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    height, width = array.shape[:2]
    crop_h, crop_w = min(crop, height), min(crop, width)
    out = np.full((crop, crop, *array.shape[2:]), fill, dtype=array.dtype)
    out[container_top:container_top + crop_h, container_left:container_left + crop_w] = \
        array[image_top:image_top + crop_h, image_left:image_left + crop_w]
    return np.ascontiguousarray(np.moveaxis(out, -1, 0)) if channels_first else out


@dataclass(frozen=True)
class TrainAugmentation:
    """Settings of the training augmentation; ``crop`` None keeps the whole resized image."""

    resize_long: tuple[int, int] | None = (320, 640)
    crop: int | None = 512
    flip: bool = True

    def __post_init__(self) -> None:
        if self.resize_long is not None:
            low, high = self.resize_long
            if not 1 <= low <= high:
                raise ValueError(f"resize_long must be MIN MAX with 1 <= MIN <= MAX, not {self.resize_long}")
        if self.crop is not None and self.crop < 1:
            raise ValueError(f"crop must be a positive size, not {self.crop}")

    def __call__(self, image: np.ndarray, rng: np.random.Generator,
                 label: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Augments an RGB uint8 image (H, W, 3) and optionally its label mask (H, W).

        Returns ``image`` float32 (3, h, w) normalised, ``valid`` bool (h, w) and, if given,
        ``label`` uint8 (h, w). Draws from ``rng`` in a fixed order: long side, flip, crop.
        """
        long_side = int(rng.integers(self.resize_long[0], self.resize_long[1] + 1)) \
            if self.resize_long is not None else None
        flip = bool(rng.random() < 0.5)
        if long_side is not None:
            image = resize_long(image, long_side, cv2.INTER_LINEAR)
            if label is not None:
                label = resize_long(label, long_side, cv2.INTER_NEAREST)
        if self.flip and flip:
            image = image[:, ::-1]
            if label is not None:
                label = label[:, ::-1]
        normalized = normalize_image(np.ascontiguousarray(image))
        valid = np.ones(image.shape[:2], dtype=bool)
        if self.crop is not None:
            offsets = crop_offsets(image.shape[0], image.shape[1], self.crop, rng)
            normalized = crop_with_offsets(normalized, self.crop, offsets, 0.0, channels_first=True)
            valid = crop_with_offsets(valid, self.crop, offsets, False)
            if label is not None:
                label = crop_with_offsets(label, self.crop, offsets, IGNORE_LABEL)
        out = {"image": normalized, "valid": valid}
        if label is not None:
            out["label"] = np.ascontiguousarray(label, dtype=np.uint8)
        return out
