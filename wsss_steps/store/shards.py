"""The resumable per-shard loop every map-writing step runs: one shard of a split → `MapWriter`,
images already in a partial file kept, ``keys`` and the image size added to each image.

`write_map_shard` stores the arrays as the compute function returns them (label maps, boundary
maps, one-hot masks); `write_seed_shard` checks and stores one-per-class seed maps (K, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss_steps.data.manifest import ImageRecord, Manifest
from wsss_steps.store.maps import MapWriter, shard_ids

log = logging.getLogger(__name__)

# Computes one image's arrays (any shapes and dtypes); ``keys`` is added from the record's labels.
MapFunction = Callable[[ImageRecord], Mapping[str, np.ndarray]]


def write_map_shard(manifest: Manifest, shard: int, num_shards: int, out_path: str | Path,
                    compute: MapFunction, stage: str, method: str, params: Mapping[str, Any],
                    desc: str | None = None) -> int:
    """Computes and writes the arrays of one shard; returns the number of images computed now."""
    ids = shard_ids(manifest.ids, shard, num_shards)
    records = {r.image_id: r for r in manifest.records}
    computed = 0
    with MapWriter(out_path, stage=stage, method=method, params=params, dataset=manifest.dataset) as writer:
        todo = [i for i in ids if not writer.is_done(i)]
        if len(todo) < len(ids):
            log.info("resuming %s: %d of %d images already written", out_path, len(ids) - len(todo), len(ids))
        for image_id in tqdm(todo, desc=desc or f"{stage} shard {shard + 1}/{num_shards}", unit="img"):
            record = records[image_id]
            arrays = {name: np.asarray(array) for name, array in compute(record).items()}
            arrays["keys"] = np.asarray(record.labels, dtype=np.int64)
            writer.write(image_id, arrays, {"height": record.height, "width": record.width})
            computed += 1
        writer.finish(ids)
    return computed


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
