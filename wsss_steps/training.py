"""Training utilities shared by the training steps (classifier, relation network, ...):
resumable checkpoints, poly learning-rate decay, frozen BatchNorm, seeded workers, CSV output."""

from __future__ import annotations

import argparse
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


def add_checkpoint_arguments(group: argparse._ArgumentGroup) -> None:
    """The resume options every training step takes: --checkpoint-dir/-every, --stop-after-epochs, --log."""
    group.add_argument("--checkpoint-dir", type=Path,
                       help="folder for last.pt; a run resumes from it when its settings match")
    group.add_argument("--checkpoint-every", type=int, default=1,
                       help="epochs between checkpoints (default: %(default)s)")
    group.add_argument("--stop-after-epochs", type=int, metavar="N",
                       help="stop after N epochs of this run (checkpointed, no model file); "
                       "a rerun resumes; for time-limited jobs")
    group.add_argument("--log", type=Path, help="also log to this file")


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The 'run' group every training step takes (--device, --threads, --num-workers); returned so
    a step can add its own."""
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--num-workers", type=int, default=0,
                     help="data-loading worker processes (default: %(default)s)")
    return run


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


def close_epoch(*, name: str, epoch: int, epochs: int, epochs_this_run: int, step: int,
                stop_after_epochs: int | None, checkpoint_path: Path | None, checkpoint_every: int,
                expected_hash: str, settings: dict[str, Any], model: nn.Module,
                optimizer: torch.optim.Optimizer, history: list[dict[str, Any]], metrics_path: Path | None,
                metric_columns: Sequence[str]) -> bool:
    """After epoch ``epoch`` (0-based) is in ``history``: writes the metrics CSV, the checkpoint when
    due (every ``checkpoint_every`` epochs, after the last, before an early stop), and returns whether
    to stop now (``stop_after_epochs`` epochs done in this run, ``epochs_this_run`` counting this one)."""
    if metrics_path is not None:
        write_csv(metrics_path, metric_columns, history)
    stopping = stop_after_epochs is not None and epochs_this_run >= stop_after_epochs and epoch + 1 < epochs
    if checkpoint_path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs or stopping):
        save_checkpoint(checkpoint_path, expected_hash, settings, epoch + 1, step, model, optimizer, history)
    if stopping:
        log.info("%s: stopping after epoch %d of %d as asked (--stop-after-epochs); rerun to resume from %s",
                 name, epoch + 1, epochs, checkpoint_path)
    return stopping


def train_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, base_lrs: Sequence[float],
                 dataset: Any, step_fn: Any, *, epochs: int, batch_size: int, seed: int,
                 device: torch.device, checkpoint_path: Path | None, checkpoint_every: int,
                 expected_hash: str, settings: dict[str, Any], metrics_path: Path | None,
                 metric_columns: Sequence[str], stop_after_epochs: int | None = None,
                 num_workers: int = 0, train_mode: Any = None, name: str = "training") -> bool:
    """The resumable epoch loop: seeded order and augmentation per epoch, poly lr, checkpoints.

    ``dataset`` has ``set_epoch(e)`` and yields batches that ``step_fn(batch)`` turns into
    ``(loss, parts)`` (parts: floats averaged into the epoch's metric row). ``base_lrs`` are the
    optimizer groups' learning rates before decay. ``train_mode(model)`` (default
    ``model.train()``) puts the model in training mode each epoch. Resumes from a matching
    ``checkpoint_path`` (see `resume_training`), writes it every ``checkpoint_every`` epochs and
    after the last. Returns False when it stopped early (``stop_after_epochs``), True when done.
    """
    import math
    import time

    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from wsss_steps.augment import epoch_permutation, epoch_torch_seed

    start_epoch, step, history = resume_training(checkpoint_path, expected_hash, settings, model, optimizer,
                                                 epochs)
    num_items = len(dataset)
    drop_last = num_items >= batch_size  # a last batch of 1 would break BatchNorm
    steps_per_epoch = num_items // batch_size if drop_last else 1
    total_steps = steps_per_epoch * epochs
    epochs_this_run = 0
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        torch.manual_seed(epoch_torch_seed(seed, epoch))
        dataset.set_epoch(epoch)
        order = epoch_permutation(seed, epoch, num_items).tolist()
        loader = DataLoader(dataset, batch_size=batch_size, sampler=order, drop_last=drop_last,
                            num_workers=num_workers, worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(epoch_torch_seed(seed, epoch)),
                            pin_memory=device.type == "cuda")
        if train_mode is None:
            model.train()
        else:
            train_mode(model)
        sums: dict[str, float] = {}
        batches = 0
        progress = tqdm(loader, total=steps_per_epoch, desc=f"{name} epoch {epoch + 1}/{epochs}",
                        unit="batch", leave=False, mininterval=1.0)
        for batch in progress:
            factor = poly_lr_factor(step, total_steps)
            for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base_lr * factor
            loss, parts = step_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            batches += 1
            for key, value in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            progress.set_postfix(loss=f"{loss.item():.4f}")
        progress.close()
        if not math.isfinite(sums.get("loss", 0.0)):
            raise RuntimeError(f"{name}: loss is not finite in epoch {epoch + 1}; lower the learning rate")
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": f"{optimizer.param_groups[0]['lr']:.6g}"}
        row.update({k: f"{v / max(batches, 1):.6g}" for k, v in sums.items()})
        row["seconds"] = f"{time.perf_counter() - started:.2f}"
        history.append(row)
        log.info("%s epoch %d/%d: %s", name, epoch + 1, epochs,
                 ", ".join(f"{k} {row[k]}" for k in metric_columns if k in row and k != "epoch"))
        epochs_this_run += 1
        if close_epoch(name=name, epoch=epoch, epochs=epochs, epochs_this_run=epochs_this_run, step=step,
                       stop_after_epochs=stop_after_epochs, checkpoint_path=checkpoint_path,
                       checkpoint_every=checkpoint_every, expected_hash=expected_hash, settings=settings,
                       model=model, optimizer=optimizer, history=history, metrics_path=metrics_path,
                       metric_columns=metric_columns):
            return False
    if metrics_path is not None:
        write_csv(metrics_path, metric_columns, history)
    return True
