"""Reading and writing images and label masks: the one place that touches image files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IGNORE_LABEL = 255


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), as an (n, 3) uint8 array."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def read_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 image (H, W, 3); raises ValueError naming the file when it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"image file could not be decoded: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Writes an RGB uint8 image; JPEG quality applies to .jpg files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write image: {path}")


def read_label_mask(path: str | Path) -> np.ndarray:
    """A label mask (H, W) uint8 of class indices (0 = background, 255 = void).

    Palette PNGs (VOC SegmentationClass) are read as indices, not colours; grey PNGs
    (SegmentationClassAug) are read as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(f"mask {path} has image mode {img.mode}; expected a palette or grey PNG of class indices")
            mask = np.asarray(img)
    except (OSError, SyntaxError) as error:
        raise ValueError(f"mask file could not be decoded: {path} ({error})") from error
    if mask.ndim != 2:
        raise ValueError(f"mask {path} has shape {mask.shape}; expected (H, W)")
    if mask.max(initial=0) > 255:
        raise ValueError(f"mask {path} has values above 255")
    return mask.astype(np.uint8)


def write_label_mask(path: str | Path, mask: np.ndarray) -> None:
    """Writes a label mask as a VOC palette PNG (what the VOC evaluation server accepts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    img.save(path)
