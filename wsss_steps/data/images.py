"""Reading and writing images and label masks: the one place that touches image files."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE_LABEL = 255
# Larger images are refused by name in `prepare_data` (raise it with dataset.max_image_pixels):
# 8000 × 8000, far above VOC's and COCO's 500–640 px and below what fits a GPU batch.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
# Our own limit replaces PIL's decompression-bomb check, whose error does not name the file.
Image.MAX_IMAGE_PIXELS = None


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
    # Pixels as stored, whatever an EXIF orientation flag says: masks (VOC, COCO, CUB) are drawn
    # on the stored pixels, and `check_image_bytes` (PIL) reads sizes the same way.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"image file could not be decoded: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageHeader(NamedTuple):
    """What `check_image_bytes` reads of an image file."""

    height: int
    width: int
    orientation: int | None  # EXIF orientation flag (1 = as stored; 2–8 mirrored/rotated); None: no flag


def check_image_bytes(data: bytes, path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageHeader:
    """Size and EXIF orientation flag of an image file's content after a full decode; raises
    ValueError naming ``path`` when it is too large (checked from the header, before decoding),
    truncated or damaged (a truncated JPEG that OpenCV would decode as mostly grey)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ValueError(f"image {path} is {width}×{height} = {width * height} pixels, above the limit of "
                                 f"{max_pixels} (raise it with the config key dataset.max_image_pixels or "
                                 "prepare_data --max-image-pixels)")
            orientation = img.getexif().get(0x0112)  # Orientation
            img.load()
    except UnidentifiedImageError as error:
        raise ValueError(f"image file could not be decoded: {path} (not an image format PIL reads)") from error
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"image file could not be decoded (damaged or truncated): {path} ({error})") from error
    return ImageHeader(height, width, int(orientation) if orientation is not None else None)


def content_digest(*contents: bytes | None) -> str:
    """sha256 over file contents in order (None: an absent file, e.g. no mask): a manifest
    record's identity, from the bytes `build_manifest` has already read."""
    digest = hashlib.sha256()
    for content in contents:
        digest.update(b"\0none" if content is None else content)
        digest.update(b"\0")
    return digest.hexdigest()


def write_image(path: str | Path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Writes an RGB uint8 image; JPEG quality applies to .jpg files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write image: {path}")


def read_label_mask(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """A label mask (H, W) uint8 of class indices (0 = background, 255 = void).

    Palette PNGs (VOC SegmentationClass) are read as indices, not colours; grey PNGs
    (SegmentationClassAug) are read as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:  # checked from the header, as for images
                raise ValueError(f"mask {path} is {img.width}×{img.height}, above the limit of {max_pixels} pixels")
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
