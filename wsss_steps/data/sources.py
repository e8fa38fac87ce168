"""Which files a manifest was built from, and whether their content changed since.

Snakemake decides reruns by modification times, which a replacement copied with ``cp -p``,
``rsync -a`` or from a tar archive keeps older than the manifest. `prepare_data` records each
source file's stat signature and sha256 (``{split}.sources.json`` beside the manifest); at
workflow start `invalidate_changed_manifest` compares them: a file whose signature differs is
hashed, and only where its content differs is the manifest marked out of date (its modification
time set to 1970, older than any input, so Snakemake reruns prepare_data and, from its new
manifest, what depends on it). A copy with a new inode or status-change time but the same bytes reruns nothing. The
status-change time (``st_ctime``) cannot be set by a copy, so a replaced file is always looked at.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

SIGNATURE_KEYS = ("size", "mtime_ns", "ctime_ns", "inode")
OUT_OF_DATE_NS = 1_000_000_000


def _signature(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
            "inode": stat.st_ino}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sources_record_path(manifest_path: str | Path) -> Path:
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(f"{manifest_path.stem}.sources.json")


def _write_record(record: dict[str, dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=0, sort_keys=True))
    tmp.replace(path)


def record_sources(files: Iterable[str | Path], manifest_path: str | Path) -> Path:
    """Writes the stat signature and sha256 of every source file (folders are skipped) beside
    the manifest; returns the record's path."""
    record = {}
    for file in files:
        path = Path(file)
        if path.is_file():
            record[str(path.resolve())] = {**_signature(path.stat()), "sha256": file_sha256(path)}
    path = sources_record_path(manifest_path)
    _write_record(record, path)
    return path


def changed_sources(manifest_path: str | Path) -> list[str]:
    """The recorded source files whose content differs from the record (or that are gone). Files
    whose signature changed but whose bytes did not get their new signature recorded, so they are
    hashed once. No record (a manifest from before records): nothing is known to have changed."""
    path = sources_record_path(manifest_path)
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return [str(path)]  # unreadable record: rebuild the manifest
    changed, refreshed = [], False
    for name, entry in record.items():
        try:
            stat = Path(name).stat()
        except OSError:
            changed.append(name)
            continue
        signature = _signature(stat)
        if all(entry.get(key) == signature[key] for key in SIGNATURE_KEYS):
            continue
        if stat.st_size != entry.get("size") or file_sha256(Path(name)) != entry.get("sha256"):
            changed.append(name)
        else:
            entry.update(signature)
            refreshed = True
    if refreshed and not changed:
        _write_record(record, path)
    return changed


def invalidate_changed_manifest(manifest_path: str | Path) -> list[str]:
    """Marks a manifest out of date (modification time 1 s after the epoch: Snakemake skips its
    newer-input check for a time of 0) when a source file's content changed;
    returns the changed files. Nothing happens without a manifest."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        return []
    changed = changed_sources(manifest_path)
    if changed:
        os.utime(manifest_path, ns=(OUT_OF_DATE_NS, OUT_OF_DATE_NS))
    return changed
