"""The one training loop of every training step (classifier and its variants, relation network,
segmentation network, and the networks to come).

A step builds its network, optimiser and dataset and hands them over as a `Trainee` with its
hooks: ``step`` (a batch → loss and named parts), ``train_mode``, ``validate`` (after every
``validate_every``-th epoch and the last), ``extra_state`` (a second network and its optimiser,
checkpointed with the first), ``after_step`` (after each optimiser step: the second network's own
step, more parts). The loop owns what every training shares:

- seeding: the epoch's sample order and augmentation come from (seed, epoch, index), never from
  a running RNG state, and torch's global generator is reseeded from (seed, epoch) each epoch, so a
  run resumed from a checkpoint continues bitwise as an uninterrupted one;
- the learning-rate schedule (poly decay by default, per step, before the step);
- gradient accumulation (``accumulation_steps``): an optimiser step sums the gradients of that
  many consecutive batches (each loss divided by it), so a small batch on a CPU takes the steps
  of a large one; losses computed over a batch (C²AM's pairs) still see one batch at a time;
- data loading: ``num_workers`` processes (persistent across epochs, pinned memory on CUDA); the
  sampler yields (epoch, index) pairs, so each worker's copy of the dataset learns the epoch from
  the items it is asked for: the batches, and so the weights, do not depend on the worker count;
- precision (``fp32``; ``bf16``, ``fp16`` under autocast, fp16 with a checkpointed GradScaler) and
  the channels-last memory format, both opt-in and part of a training's identity
  (`precision_settings`);
- the progress bar, one metrics CSV row per epoch, a non-finite loss stopping the run; the epoch's
  loss and parts are summed on the device (float64) and read once per epoch, so a step does not
  wait for the device;
- checkpoints: ``last.pt`` every ``checkpoint_every`` epochs, after the last and before a stop
  asked for with ``stop_after_epochs``; continued only when written with the same settings;
- with ``keep_epoch_weights``, every epoch's weights as ``epoch-NNN.pt`` (for criteria that choose
  an epoch afterwards).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from wsss_steps.networks.io import atomic_torch_save
from wsss_steps.training.augment import epoch_permutation, epoch_torch_seed
from wsss_steps.training.checkpoints import load_checkpoint, save_checkpoint, settings_hash
from wsss_steps.training.schedules import poly_lr_factor

log = logging.getLogger(__name__)

# A part is a number or a 0-d tensor (kept on the device: the loop sums it there).
Parts = Mapping[str, float | torch.Tensor]
StepFunction = Callable[[Any, int], tuple[torch.Tensor, Parts]]

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The progress bar shows the loss every this many batches (reading it waits for the device).
PROGRESS_EVERY = 25


@dataclass
class Trainee:
    """A network to train and the hooks of its training (see the module docstring)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    base_lrs: Sequence[float]  # the optimiser groups' learning rates before the schedule
    dataset: Any  # len(), items for a DataLoader, and set_epoch(epoch)
    step: StepFunction  # (batch, global step) → (loss, {name: part}); the loop does backward + step
    train_mode: Callable[[], None] | None = None  # default: model.train()
    validate: Callable[[int], dict[str, Any]] | None = None  # after epoch e: entries of its metrics row
    extra_state: Mapping[str, Any] = field(default_factory=dict)  # objects with (load_)state_dict
    after_step: Callable[[int], Parts] | None = None  # (global step) after the optimiser step, in fp32
    lr_schedule: Callable[[int, int], float] = poly_lr_factor


@dataclass
class LoopSettings:
    name: str
    epochs: int
    batch_size: int
    seed: int
    device: torch.device
    settings: dict[str, Any]  # everything that shapes the weights: a checkpoint is resumed only with these
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1
    stop_after_epochs: int | None = None
    keep_epoch_weights: bool = False
    validate_every: int = 1  # epochs between validations (the last is always validated); not in `settings`
    metrics_path: Path | None = None
    metric_columns: Sequence[str] = ("epoch", "step", "lr", "loss", "seconds")
    loss_column: str = "loss"
    num_workers: int = 0  # data-loading processes: the weights do not depend on it
    accumulation_steps: int = 1  # batches whose gradients one optimiser step sums
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast); in `settings` through `precision_settings`
    channels_last: bool = False  # the networks in the channels-last memory format; likewise


@dataclass
class TrainingResult:
    finished: bool  # False: stopped early as asked (stop_after_epochs); no model file should be written
    history: list[dict[str, Any]]
    validation: dict[str, Any] | None  # the last validation of this run (None when no epoch ran)
    settings_hash: str


def precision_settings(precision: str = "fp32", channels_last: bool = False) -> dict[str, Any]:
    """The identity entries of a precision and memory format: none at the defaults (fp32,
    contiguous), so the trainings and maps made before these options keep their identity."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    entries: dict[str, Any] = {}
    if precision != "fp32":
        entries["precision"] = precision
    if channels_last:
        entries["channels_last"] = True
    return entries


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """Autocast to ``precision`` on ``device`` (nothing for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def to_channels_last(*modules: nn.Module) -> None:
    """Converts the modules' 4-d parameters and buffers in place (the Parameter objects stay, so an
    optimiser built on them keeps working); a convolution whose weight is channels-last computes
    in that format whatever its input's."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


class EpochSampler(Sampler[tuple[int, int]]):
    """The epoch's order as (epoch, index) pairs; `epoch` is set before each pass."""

    def __init__(self, seed: int, num_items: int, epoch_items: int):
        self.seed, self.num_items, self.epoch_items = seed, num_items, epoch_items
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_permutation(self.seed, self.epoch, self.num_items).tolist()[:self.epoch_items]
        return iter([(self.epoch, index) for index in order])

    def __len__(self) -> int:
        return self.epoch_items


class EpochIndexed(Dataset):
    """A dataset read by (epoch, index): calls its ``set_epoch`` when the epoch changes. Persistent
    workers hold copies of the dataset made when they started; the epoch reaches them this way."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self.epoch:
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[index]


def seed_worker(worker_id: int) -> None:
    # Augmentation never uses global generators; seeding them (torch already gives each worker
    # base seed + worker id) keeps any library that does reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


def set_bn_frozen(model: nn.Module) -> None:
    """BatchNorm layers to eval mode (running statistics used and kept); affine weights still train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes rows (dicts) under ``columns`` atomically (a kill never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    os.replace(tmp, path)


def steps_per_epoch(num_items: int, batch_size: int, accumulation_steps: int = 1) -> int:
    """Optimiser steps per epoch: whole steps of ``batch_size × accumulation_steps`` items (the
    rest of the epoch's order is left out), or one step over everything when there are fewer."""
    items_per_step = batch_size * accumulation_steps
    return num_items // items_per_step if num_items >= items_per_step else 1


def _state(trainee: Trainee, scaler: torch.amp.GradScaler | None) -> dict[str, Any]:
    state = {"model": trainee.model.state_dict(), "optimizer": trainee.optimizer.state_dict()}
    if trainee.extra_state:
        state["extra"] = {name: obj.state_dict() for name, obj in trainee.extra_state.items()}
    if scaler is not None:
        state["grad_scaler"] = scaler.state_dict()
    return state


def _resume(trainee: Trainee, plan: LoopSettings, path: Path | None, expected_hash: str,
            scaler: torch.amp.GradScaler | None) -> tuple[int, int, list[dict[str, Any]]]:
    if path is None:
        return 0, 0, []
    checkpoint = load_checkpoint(path, expected_hash, plan.settings)
    if checkpoint is None:
        return 0, 0, []
    trainee.model.load_state_dict(checkpoint["model"])
    trainee.optimizer.load_state_dict(checkpoint["optimizer"])
    extra = checkpoint.get("extra", {})
    for name, obj in trainee.extra_state.items():
        obj.load_state_dict(extra[name])
    if scaler is not None:
        scaler.load_state_dict(checkpoint["grad_scaler"])
    start_epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
    log.info("%s: resuming from %s after epoch %d of %d", plan.name, path, start_epoch, plan.epochs)
    return start_epoch, step, list(checkpoint["history"])


def train(trainee: Trainee, plan: LoopSettings) -> TrainingResult:
    """Runs (or resumes) the epochs of ``plan`` on ``trainee``."""
    # The precision is part of the identity even where a caller's settings leave it out (they
    # hold it already when made by `cli.loop_settings`; none of it at the defaults).
    plan = dataclasses.replace(plan, settings={**plan.settings,
                                               **precision_settings(plan.precision, plan.channels_last)})
    expected_hash = settings_hash(plan.settings)
    if plan.channels_last:  # before the resume: the checkpoint's values are copied into this layout
        to_channels_last(trainee.model, *(obj for obj in trainee.extra_state.values() if isinstance(obj, nn.Module)))
    scaler = torch.amp.GradScaler(plan.device.type) if plan.precision == "fp16" else None
    checkpoint_path = plan.checkpoint_dir / "last.pt" if plan.checkpoint_dir is not None else None
    start_epoch, step, history = _resume(trainee, plan, checkpoint_path, expected_hash, scaler)
    dataset, optimizer = trainee.dataset, trainee.optimizer
    num_items = len(dataset)
    accumulation = plan.accumulation_steps
    if accumulation < 1:
        raise ValueError(f"{plan.name}: accumulation_steps must be ≥ 1, not {accumulation}")
    if plan.validate_every < 1:
        raise ValueError(f"{plan.name}: validate_every must be ≥ 1, not {plan.validate_every}")
    drop_last = num_items >= plan.batch_size  # a last batch of 1 would break BatchNorm
    epoch_steps = steps_per_epoch(num_items, plan.batch_size, accumulation)
    # Batches of an epoch: whole optimiser steps only (with fewer items than one step: them all).
    epoch_items = epoch_steps * plan.batch_size * accumulation if num_items >= plan.batch_size * accumulation \
        else num_items
    epoch_batches = max(1, epoch_items // plan.batch_size) if drop_last else 1
    total_steps = epoch_steps * plan.epochs
    validation: dict[str, Any] | None = None
    epochs_this_run = 0
    sampler = EpochSampler(plan.seed, num_items, epoch_items)
    indexed = EpochIndexed(dataset)
    # Built once: persistent workers start once per run, not per epoch. The generator only seeds the
    # workers' global generators, which the augmentation never uses; it keeps torch's global
    # generator untouched by the loader (as dropout and the like draw from it).
    loader = DataLoader(indexed, batch_size=plan.batch_size, sampler=sampler, drop_last=drop_last,
                        num_workers=plan.num_workers, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(epoch_torch_seed(plan.seed, start_epoch)),
                        pin_memory=plan.device.type == "cuda", persistent_workers=plan.num_workers > 0)
    try:
        for epoch in range(start_epoch, plan.epochs):
            started = time.perf_counter()
            torch.manual_seed(epoch_torch_seed(plan.seed, epoch))
            dataset.set_epoch(epoch)  # for hooks that read it in this process
            indexed.epoch = sampler.epoch = epoch
            if trainee.train_mode is None:
                trainee.model.train()
            else:
                trainee.train_mode()
            sums: dict[str, float | torch.Tensor] = {}
            counts: dict[str, int] = {}  # a part may be reported on some steps only
            batches = 0
            progress = tqdm(loader, total=epoch_batches,
                            desc=f"{plan.name} epoch {epoch + 1}/{plan.epochs}", unit="batch", leave=False,
                            mininterval=1.0)
            for batch in progress:
                first_of_step = batches % accumulation == 0
                if first_of_step:
                    factor = trainee.lr_schedule(step, total_steps)
                    for group, base_lr in zip(optimizer.param_groups, trainee.base_lrs, strict=True):
                        group["lr"] = base_lr * factor
                with autocast(plan.device, plan.precision):
                    loss, parts = trainee.step(batch, step)
                if first_of_step:  # after the step function: gradients it leaves behind are not kept
                    optimizer.zero_grad(set_to_none=True)
                scaled = loss / accumulation if accumulation > 1 else loss
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                batches += 1
                if batches % accumulation == 0 or batches == epoch_batches:
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if trainee.after_step is not None:
                        parts = {**parts, **trainee.after_step(step)}
                    step += 1
                for key, value in {plan.loss_column: loss, **parts}.items():
                    # float64 as the Python floats summed before: the same row to the last digit.
                    term = value.detach().to(torch.float64) if isinstance(value, torch.Tensor) else float(value)
                    sums[key] = sums.get(key, 0.0) + term
                    counts[key] = counts.get(key, 0) + 1
                if batches % PROGRESS_EVERY == 0:
                    progress.set_postfix(loss=f"{float(loss):.4f}")
            progress.close()
            totals = _read_sums(sums)
            if not math.isfinite(totals.get(plan.loss_column, 0.0)):
                raise RuntimeError(f"{plan.name}: loss is not finite in epoch {epoch + 1}; lower the learning rate")
            row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": f"{optimizer.param_groups[0]['lr']:.6g}"}
            row.update({k: f"{v / counts[k]:.6g}" for k, v in totals.items()})
            if trainee.validate is not None and ((epoch + 1) % plan.validate_every == 0 or epoch + 1 == plan.epochs):
                validation = trainee.validate(epoch)
                row.update({k: v for k, v in validation.items() if k in plan.metric_columns})
            row["seconds"] = f"{time.perf_counter() - started:.2f}"
            history.append(row)
            log.info("%s epoch %d/%d: %s", plan.name, epoch + 1, plan.epochs,
                     ", ".join(f"{k} {row[k]}" for k in plan.metric_columns if k in row and k != "epoch"))
            epochs_this_run += 1
            if plan.metrics_path is not None:
                write_csv(plan.metrics_path, plan.metric_columns, history)
            if plan.keep_epoch_weights and plan.checkpoint_dir is not None:
                atomic_torch_save({"epoch": epoch + 1, "settings_hash": expected_hash,
                                   "model": trainee.model.state_dict()},
                                  plan.checkpoint_dir / f"epoch-{epoch + 1:03d}.pt")
            stopping = (plan.stop_after_epochs is not None and epochs_this_run >= plan.stop_after_epochs
                        and epoch + 1 < plan.epochs)
            if checkpoint_path is not None and ((epoch + 1) % plan.checkpoint_every == 0
                                                or epoch + 1 == plan.epochs or stopping):
                save_checkpoint(checkpoint_path, expected_hash, plan.settings, epoch + 1, step,
                                _state(trainee, scaler), history)
            if stopping:
                log.info("%s: stopping after epoch %d of %d as asked (--stop-after-epochs); rerun to resume from %s",
                         plan.name, epoch + 1, plan.epochs, checkpoint_path)
                return TrainingResult(False, history, validation, expected_hash)
    finally:
        del loader  # its persistent workers end with it, also when an error leaves this frame alive
    if plan.metrics_path is not None:
        write_csv(plan.metrics_path, plan.metric_columns, history)
    return TrainingResult(True, history, validation, expected_hash)


def _read_sums(sums: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """The epoch's sums as floats (a few reads from the device per epoch)."""
    return {key: float(value) for key, value in sums.items()}
