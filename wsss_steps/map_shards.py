"""The resumable per-shard loop for steps whose maps are not one-per-class seed maps.

`wsss_steps.seed_shards.write_seed_shard` stores (K, ...) maps of one dtype; label maps (H, W),
boundary maps at stride 4 or uint8 one-hot masks do not fit it. This loop is the same (one
shard of a split → `MapWriter`, images already in a partial file kept) but stores the arrays as
the compute function returns them, plus ``keys`` and the image size.
"""

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
