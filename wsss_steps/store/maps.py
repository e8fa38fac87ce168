"""Per-image maps in HDF5: sharded writing that resumes, and a merge that checks completeness.

File layout (plain h5py / h5ls / h5dump readable):
- file attributes: ``stage``, ``method``, ``params`` (JSON), ``code_version``, ``dataset``,
  ``complete`` (set last, before the atomic rename);
- one group per image id with datasets such as ``cam`` (K, H, W), ``cam_stride4`` (K, h, w),
  ``keys`` (the K foreground class indices the maps belong to) and attributes ``height``, ``width``;
  a group's attribute ``complete`` marks it fully written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsss_steps import __version__
from wsss_steps.store.digests import differing_keys

log = logging.getLogger("wsss_steps.store.maps")

COMPRESSION = "gzip"
COMPRESSION_LEVEL = 4


class MapStoreError(RuntimeError):
    """A map file that is incomplete, from other settings, or missing images."""


def shard_ids(ids: Sequence[str], shard: int, num_shards: int) -> list[str]:
    """The contiguous, deterministic slice of ``ids`` that shard ``shard`` (0-based) handles."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    bounds = np.linspace(0, len(ids), num_shards + 1).round().astype(int)
    return list(ids[bounds[shard]:bounds[shard + 1]])


def shard_path(directory: str | Path, shard: int, num_shards: int) -> Path:
    return Path(directory) / f"shard-{shard}-of-{num_shards}.h5"


def _file_attrs(stage: str, method: str, params: Mapping[str, Any], dataset: str) -> dict[str, str]:
    return {"stage": stage, "method": method, "dataset": dataset, "code_version": __version__,
            "params": json.dumps(params, sort_keys=True)}


def _param_difference(old: Any, new: str) -> str:
    """'' or ': keys a, b' naming the top-level params that differ (the log says why a shard restarts)."""
    try:
        before, after = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        return ""
    keys = differing_keys(before, after)
    return f": params {', '.join(keys)}" if keys else ""


def _salvage_partial(path: Path, attrs: Mapping[str, str]) -> bool:
    """Rewrites a partial file killed mid-write with only its complete, readable images.

    A kill during a write can leave HDF5 metadata half-written: the file opens and lists the
    image, but opening the image's group then fails. Resuming by appending to such a file is
    unsafe, so the images that read back whole are copied into a fresh file, which replaces it.
    Returns False, and leaves the file alone, when it is from other settings or unreadable.
    """
    fresh = path.with_name(path.name + ".salvage")
    try:
        with h5py.File(path, "r") as old:
            differing = sorted(k for k, v in attrs.items() if old.attrs.get(k) != v)
            if differing:
                log.warning("%s was written by another computation (its %s differ%s): starting this shard "
                            "over", path, ", ".join(differing), _param_difference(old.attrs.get("params"),
                                                                             attrs["params"]))
                return False
            with h5py.File(fresh, "w") as new:
                for image_id in list(old):
                    try:
                        group = old[image_id]
                        if not group.attrs.get("complete", False):
                            continue
                        for name in group:
                            group[name][()]
                    except (KeyError, OSError, RuntimeError, ValueError):
                        continue
                    old.copy(group, new, name=image_id)
    except OSError as error:
        log.warning("%s cannot be read (%s): starting this shard over", path, error)
        fresh.unlink(missing_ok=True)
        return False
    os.replace(fresh, path)
    return True


class MapWriter:
    """Writes one shard to ``<path>.partial`` and renames it to ``path`` once every image is in.

    A rerun after a kill keeps the partial file's complete images that read back whole
    (`_salvage_partial`) and computes the rest, as long as the partial file was written with the
    same stage, method, params and dataset; otherwise it starts over.
    """

    def __init__(self, path: str | Path, stage: str, method: str, params: Mapping[str, Any],
                 dataset: str):
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.attrs = _file_attrs(stage, method, params, dataset)
        self._file: h5py.File | None = None

    def __enter__(self) -> MapWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial_path.exists() and not _salvage_partial(self.partial_path, self.attrs):
            self.partial_path.unlink()
        self._file = h5py.File(self.partial_path, "a")
        for key, value in self.attrs.items():
            self._file.attrs[key] = value
        return self

    def is_done(self, image_id: str) -> bool:
        assert self._file is not None
        return image_id in self._file and bool(self._file[image_id].attrs.get("complete", False))

    def write(self, image_id: str, maps: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        assert self._file is not None
        if image_id in self._file:
            del self._file[image_id]
        group = self._file.create_group(image_id)
        for name, array in maps.items():
            array = np.asarray(array)
            if array.ndim >= 2 and array.size > 16:
                group.create_dataset(name, data=array, compression=COMPRESSION,
                                     compression_opts=COMPRESSION_LEVEL, chunks=True, shuffle=True)
            else:
                group.create_dataset(name, data=array)
        for key, value in attrs.items():
            group.attrs[key] = value
        group.attrs["complete"] = True
        self._file.flush()

    def finish(self, expected_ids: Sequence[str]) -> None:
        """Checks every expected id is complete, then publishes the shard under its final name."""
        assert self._file is not None
        missing = [i for i in expected_ids if not self.is_done(i)]
        if missing:
            raise MapStoreError(f"{self.partial_path}: {len(missing)} image(s) not written, e.g. {missing[:5]}")
        self._file.attrs["complete"] = True
        self._file.close()
        self._file = None
        os.replace(self.partial_path, self.path)

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _damaged(path: Path, what: str, error: BaseException) -> MapStoreError:
    """The error for a map file that is there but does not read back: the workflow takes an existing
    file as done, so rerunning repeats the error until the file is deleted."""
    return MapStoreError(f"map file {path} {what} ({type(error).__name__}: {error}); it is truncated or "
                         f"damaged (a full disk, a copy cut short?): delete it to recompute it")


def _open_complete(path: Path) -> h5py.File:
    if not path.is_file():
        raise MapStoreError(f"map file {path} not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise _damaged(path, "cannot be opened", error) from error
    if not handle.attrs.get("complete", False):
        handle.close()
        raise MapStoreError(f"map file {path} is not marked complete (killed while writing?): "
                            "delete it to recompute it")
    return handle


def merge_shards(shard_paths: Sequence[str | Path], out_path: str | Path,
                 expected_ids: Sequence[str], link: bool = False) -> None:
    """Merges shards into one file holding every expected id (copies, or external links).

    Raises when an id is missing, appears twice, is not expected, or the shards disagree on their
    settings. The merged file is written under a temporary name and renamed at the end.
    """
    out_path = Path(out_path)
    tmp_path = out_path.with_name(out_path.name + ".partial")
    seen: dict[str, Path] = {}
    attrs: dict[str, Any] | None = None
    with h5py.File(tmp_path, "w") as out:
        for shard in map(Path, shard_paths):
            with _open_complete(shard) as source:
                shard_attrs = {k: source.attrs[k] for k in ("stage", "method", "params", "dataset")}
                if attrs is None:
                    attrs = dict(source.attrs)
                elif any(attrs[k] != v for k, v in shard_attrs.items()):
                    raise MapStoreError(f"shard {shard} was written with other settings than {shard_paths[0]}")
                for image_id in source:
                    if image_id in seen:
                        raise MapStoreError(f"image {image_id!r} is in both {seen[image_id]} and {shard}")
                    seen[image_id] = shard
                    if link:
                        out[image_id] = h5py.ExternalLink(os.path.relpath(shard, out_path.parent), image_id)
                    else:
                        try:
                            source.copy(source[image_id], out, name=image_id)
                        except (OSError, RuntimeError, KeyError) as error:
                            raise _damaged(shard, f"cannot be read at image {image_id!r}", error) from error
        missing = [i for i in expected_ids if i not in seen]
        extra = sorted(set(seen) - set(expected_ids))
        if missing or extra:
            raise MapStoreError(
                f"merging into {out_path}: {len(missing)} expected image(s) missing (e.g. {missing[:5]}), "
                f"{len(extra)} unexpected (e.g. {extra[:5]})"
            )
        for key, value in (attrs or {}).items():
            out.attrs[key] = value
        out.attrs["num_images"] = len(seen)
        out.attrs["complete"] = True
    os.replace(tmp_path, out_path)


# HDF5 keeps the metadata of every object read in its cache until the file is closed: ~10 KB an
# image, 0.8 GB after COCO's 82,783 images (benchmarks/scale_simulation.py: 190 MB after 20,000).
# The reader reopens the file after this many reads, which bounds it (opening costs ~1 ms).
REOPEN_EVERY = 1000


class MapReader:
    """Reads a complete map file (a merged stage output or a single shard)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = _open_complete(self.path)
        self._reads = 0
        self.attrs = dict(self._file.attrs)
        self.params: dict[str, Any] = json.loads(self.attrs.get("params", "{}"))

    def __enter__(self) -> MapReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def ids(self) -> list[str]:
        return list(self._file.keys())

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._file

    def read(self, image_id: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        self._reads += 1
        if self._reads % REOPEN_EVERY == 0:
            self._file.close()
            self._file = _open_complete(self.path)
        if image_id not in self._file:
            raise MapStoreError(f"image {image_id!r} is not in {self.path}")
        group = self._file[image_id]
        return {name: group[name][()] for name in (names or group.keys())}

    def image_attrs(self, image_id: str) -> dict[str, Any]:
        return dict(self._file[image_id].attrs)

    def require(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self._file]
        if missing:
            raise MapStoreError(f"{self.path} lacks {len(missing)} image(s) of the split, e.g. {missing[:5]}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._file.keys())
