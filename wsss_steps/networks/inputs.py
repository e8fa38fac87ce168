"""Image normalisation shared by training and inference (ImageNet statistics)."""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) → float32 (3, H, W) normalised with the ImageNet mean and std."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
    std = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0
    return np.ascontiguousarray(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1))


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """RGB uint8 (H, W, 3) → normalised float tensor (1, 3, H, W) on ``device``."""
    return torch.from_numpy(normalize_image(image)).unsqueeze(0).to(device)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cpu`` / ``cuda`` / ``cuda:N`` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for (config key 'device') but CUDA is not available")
    return device
