"""The shard loop of seed methods: per-class maps (K, ...) of one shard, stored compactly."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsss_steps.datasets import ImageRecord, Manifest
from wsss_steps.map_shards import write_map_shard

# Computes the maps of one image: returns {"cam": (K,H,W), "cam_stride4": (K,h,w)} for the
# image's label classes (``record.labels`` are the keys).
SeedFunction = Callable[[ImageRecord], Mapping[str, np.ndarray]]


def write_seed_shard(manifest: Manifest, shard: int, num_shards: int, out_path: str | Path,
                     compute: SeedFunction, method: str, params: Mapping[str, Any],
                     stage: str = "seeds", dtype: np.dtype | type = np.float16) -> int:
    """Computes and writes the maps of one shard; images already in a partial file are kept.

    Every map must have one channel per label class. Maps are stored as ``dtype`` (float16 by
    default: maps are in [0, 1], and a 5e-4 step does not move a threshold sweep). Returns the
    number of images computed in this run.
    """

    def checked(record: ImageRecord) -> dict[str, np.ndarray]:
        maps = compute(record)
        for name, array in maps.items():
            if array.shape[0] != len(record.labels):
                raise ValueError(f"{method}: map {name!r} of {record.image_id!r} has {array.shape[0]} "
                                 f"channels, expected {len(record.labels)} (one per label class)")
        return {name: np.asarray(array, dtype=dtype) for name, array in maps.items()}

    return write_map_shard(manifest, shard, num_shards, out_path, checked, stage=stage, method=method,
                           params=params, desc=f"{method} shard {shard + 1}/{num_shards}")
