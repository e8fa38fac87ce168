"""Training utilities shared by the training steps (classifier, relation network, ...):
resumable checkpoints, poly learning-rate decay, frozen BatchNorm, seeded workers, CSV output."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsss_steps.networks.io import atomic_torch_save

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "wsss_train_checkpoint/2"  # 2: small_resnet with hybrid dilations
POLY_POWER = 0.9


def settings_hash(settings: dict[str, Any]) -> str:
    """The hash a checkpoint stores: resume only from a run with exactly these settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def seed_worker(worker_id: int) -> None:
    # Augmentation never uses global generators; seeding them (torch already gives each worker
    # base seed + worker id) keeps any library that does reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


def poly_lr_factor(step: int, total_steps: int, power: float = POLY_POWER) -> float:
    return (1.0 - step / total_steps) ** power if step < total_steps else 0.0


def set_bn_frozen(model: nn.Module) -> None:
    """BatchNorm layers to eval mode (running statistics used and kept); affine weights still train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    os.replace(tmp, path)


def load_checkpoint(path: Path, expected_hash: str, settings: dict[str, Any]) -> dict[str, Any] | None:
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
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        log.warning("checkpoint %s was written with other settings (differing: %s): starting fresh",
                    path, ", ".join(changed) or "unknown")
        return None
    return checkpoint


def resume_training(checkpoint_path: Path | None, expected_hash: str, settings: dict[str, Any],
                    model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int
                    ) -> tuple[int, int, list[dict[str, Any]]]:
    """Loads a matching checkpoint into model and optimizer: (start epoch, step, metric history)."""
    if checkpoint_path is None:
        return 0, 0, []
    checkpoint = load_checkpoint(checkpoint_path, expected_hash, settings)
    if checkpoint is None:
        return 0, 0, []
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    start_epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
    log.info("resuming from %s after epoch %d of %d", checkpoint_path, start_epoch, epochs)
    return start_epoch, step, list(checkpoint["history"])


def save_checkpoint(checkpoint_path: Path, expected_hash: str, settings: dict[str, Any], epoch: int,
                    step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    history: list[dict[str, Any]]) -> None:
    """Writes what `resume_training` reads, atomically (a kill never leaves a torn checkpoint)."""
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT, "settings_hash": expected_hash, "settings": settings,
        "epoch": epoch, "step": step, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "history": history,
    }, checkpoint_path)
