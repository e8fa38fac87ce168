"""The loop every seed method shares: one shard of a split's images → one resumable HDF5 shard."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss_steps.datasets import ImageRecord, Manifest
from wsss_steps.map_store import MapWriter, shard_ids

log = logging.getLogger(__name__)

# Computes the maps of one image: returns {"cam": (K,H,W), "cam_stride4": (K,h,w)} for the
# image's label classes (``record.labels`` are the keys).
SeedFunction = Callable[[ImageRecord], Mapping[str, np.ndarray]]


def write_seed_shard(manifest: Manifest, shard: int, num_shards: int, out_path: str | Path,
                     compute: SeedFunction, method: str, params: Mapping[str, Any],
                     stage: str = "seeds", dtype: np.dtype | type = np.float16) -> int:
    """Computes and writes the maps of one shard; images already in a partial file are kept.

    Maps are stored as ``dtype`` (float16 by default: maps are in [0, 1], and a 5e-4 step does not
    move a threshold sweep). Returns the number of images computed in this run.
    """
    ids = shard_ids(manifest.ids, shard, num_shards)
    records = {r.image_id: r for r in manifest.records}
    computed = 0
    with MapWriter(out_path, stage=stage, method=method, params=params, dataset=manifest.dataset) as writer:
        todo = [i for i in ids if not writer.is_done(i)]
        if len(todo) < len(ids):
            log.info("resuming %s: %d of %d images already written", out_path, len(ids) - len(todo), len(ids))
        for image_id in tqdm(todo, desc=f"{method} shard {shard + 1}/{num_shards}", unit="img"):
            record = records[image_id]
            maps = compute(record)
            keys = np.asarray(record.labels, dtype=np.int64)
            for name, array in maps.items():
                if array.shape[0] != len(keys):
                    raise ValueError(f"{method}: map {name!r} of {image_id!r} has {array.shape[0]} channels, "
                                     f"expected {len(keys)} (one per label class)")
            stored = {name: np.asarray(array, dtype=dtype) for name, array in maps.items()}
            stored["keys"] = keys
            writer.write(image_id, stored, {"height": record.height, "width": record.width})
            computed += 1
        writer.finish(ids)
    return computed
