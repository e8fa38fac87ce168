"""Image normalisation shared by training and inference (ImageNet statistics), and the device a
step runs on: `resolve_device` (fails at once where CUDA is asked for and unusable) and `claim_gpu`
(one GPU per step where several steps share a machine with several GPUs)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch

log = logging.getLogger(__name__)

OLD_DRIVER_DOCS = "docs/cluster.md, section \"A torch build for an older NVIDIA driver\""
GPU_LOCK_DIR_ENV = "WSSS_GPU_LOCK_DIR"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) → float32 (3, H, W) normalised with the ImageNet mean and std."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
    std = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0
    return np.ascontiguousarray(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1))


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """RGB uint8 (H, W, 3) → normalised float tensor (1, 3, H, W) on ``device``."""
    return torch.from_numpy(normalize_image(image)).unsqueeze(0).to(device)


def cuda_state() -> tuple[bool, str]:
    """Whether torch can use CUDA, and a description of why not: torch's version and CUDA build, and
    the warning torch gave while it looked (an NVIDIA driver too old for the build, no driver...)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return True, ""
    build = (f"built for CUDA {torch.version.cuda}" if torch.version.cuda
             else "a CPU-only build (torch.version.cuda is None)")
    reasons = "; ".join(" ".join(str(w.message).split()) for w in caught)
    because = f" torch's reason: {reasons}" if reasons else " torch gave no reason (no GPU visible to this process?)"
    return False, f"torch {torch.__version__} is {build}, and torch.cuda.is_available() is False.{because}"


def resolve_device(name: str) -> torch.device:
    """The torch device of ``name``: ``auto`` is CUDA where torch can use it, else the CPU (logged,
    with the reason); ``cpu`` / ``cuda`` / ``cuda:N`` are taken as given, and a CUDA device torch
    cannot use is an error at once, never a fall back to the CPU."""
    if name == "auto":
        available, why_not = cuda_state()
        if available:
            log.info("device auto: cuda (torch %s, CUDA %s, %d GPU(s) visible)", torch.__version__,
                     torch.version.cuda, torch.cuda.device_count())
            return torch.device("cuda")
        log.info("device auto: cpu, since %s", why_not)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    available, why_not = cuda_state()
    if not available:
        raise RuntimeError(f"device {name!r} was asked for (--device; config key 'device', or a job that asks "
                           f"for a GPU) but CUDA is unusable: {why_not} Where the node has a GPU, its NVIDIA "
                           f"driver may be older than this torch build needs (nvidia-smi shows the CUDA "
                           f"version it supports): see {OLD_DRIVER_DOCS}.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {name!r} was asked for but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def _open_lock(path: Path) -> IO[bytes]:
    # Read-only is enough for flock, so another user's lock file in /tmp can be locked too; created
    # only where missing (fs.protected_regular refuses O_CREAT on others' files in sticky folders).
    try:
        return open(path, "rb")
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        return os.fdopen(fd, "rb")


def gpu_lock_dir() -> Path:
    """Where GPU claims are: $WSSS_GPU_LOCK_DIR, else the system's temporary folder."""
    return Path(os.environ.get(GPU_LOCK_DIR_ENV) or tempfile.gettempdir())


def claim_gpu(count: int, lock_dir: Path | None = None, timeout: float | None = None,
              poll_seconds: float = 5.0) -> tuple[int, IO[bytes]]:
    """Claims one of ``count`` GPUs for this process: the first index whose lock file
    ``wsss-gpu-<index>.lock`` in ``lock_dir`` (default `gpu_lock_dir`) it can flock. The lock lasts
    as long as the returned file stays open (the process's lifetime; the system drops it when the
    process ends, however it ends). Where every GPU is claimed it waits, polling every
    ``poll_seconds``, for one to be released (logging once that it waits), and raises TimeoutError
    after ``timeout`` seconds (None: waits as long as it takes)."""
    folder = lock_dir if lock_dir is not None else gpu_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    waited = False
    while True:
        for index in range(count):
            handle = _open_lock(folder / f"wsss-gpu-{index}.lock")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                handle.close()
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                continue
            return index, handle
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"all {count} GPUs are claimed by other steps (lock files wsss-gpu-*.lock in "
                               f"{folder}) after {timeout} s")
        if not waited:
            log.warning("all %d GPUs are claimed by other steps (lock files wsss-gpu-*.lock in %s); waiting "
                        "for one (snakemake --resources gpu=N with N above the GPU count?)", count, folder)
            waited = True
        time.sleep(poll_seconds if deadline is None else max(0.0, min(poll_seconds, deadline - time.monotonic())))


# The claimed GPU's lock, held until the process ends.
_CLAIMED: list[IO[bytes]] = []


def device_for_this_process(device: torch.device) -> torch.device:
    """``device`` as this step uses it: plain `cuda` on a machine where torch sees several GPUs
    becomes `cuda:<k>`, the first GPU no other step has claimed (`claim_gpu`), so that jobs
    running side by side (`snakemake --resources gpu=N`) do not all land on GPU 0. Where torch sees
    one GPU (a SLURM job sees only its own; CUDA_VISIBLE_DEVICES naming one) nothing is claimed."""
    if device.type != "cuda" or device.index is not None:
        return device
    count = torch.cuda.device_count()
    if count <= 1:
        return device
    index, handle = claim_gpu(count)
    _CLAIMED.append(handle)
    torch.cuda.set_device(index)
    log.info("claimed GPU %d of %d (lock %s)", index, count, handle.name)
    return torch.device("cuda", index)
