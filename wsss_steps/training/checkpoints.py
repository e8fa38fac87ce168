"""Resumable training checkpoints: written atomically, continued only with the same settings."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from wsss_steps.networks.io import atomic_torch_save
from wsss_steps.store.digests import differing_keys

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "wsss_train_checkpoint/2"  # 2: small_resnet with hybrid dilations


def settings_hash(settings: dict[str, Any]) -> str:
    """The hash a checkpoint stores: resume only from a run with exactly these settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def load_checkpoint(path: Path, expected_hash: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when it was written with these settings, else None (and why, logged)."""
    if not path.is_file():
        log.info("no checkpoint at %s: starting fresh", path)
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file must not stop a fresh start
        log.warning("checkpoint %s could not be read (%s): starting fresh", path, error)
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        log.warning("%s is not a training checkpoint of this step: starting fresh", path)
        return None
    if checkpoint.get("settings_hash") != expected_hash:
        old = checkpoint.get("settings") or {}
        changed = differing_keys(old, settings)
        log.warning("checkpoint %s was written with other settings (differing: %s): starting fresh",
                    path, ", ".join(changed) or "unknown")
        return None
    return checkpoint


def save_checkpoint(path: Path, expected_hash: str, settings: dict[str, Any], epoch: int, step: int,
                    state: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """Writes what `load_checkpoint` reads; ``state`` holds the state dicts (``model``,
    ``optimizer`` and any a variant adds)."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "settings_hash": expected_hash, "settings": settings,
                       "epoch": epoch, "step": step, **state, "history": history}, path)
