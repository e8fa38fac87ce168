"""The device a step runs on: a CUDA device torch cannot use fails the step at its start with the
reason (never a silent fall back to the CPU), `auto` logs what it chose, and steps sharing a
machine with several GPUs each claim a GPU of their own."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from wsss_steps.networks import inputs
from wsss_steps.networks.inputs import claim_gpu, device_for_this_process, resolve_device

from .workflow_helpers import ENV, ROOT

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch cannot use CUDA")


@cpu_only
def test_cuda_asked_for_and_unusable_fails_with_the_reason() -> None:
    with pytest.raises(RuntimeError) as error:
        resolve_device("cuda")
    message = str(error.value)
    assert f"torch {torch.__version__}" in message
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    assert build in message
    assert "torch.cuda.is_available() is False" in message
    assert "docs/cluster.md" in message and "older NVIDIA driver" in message
    with pytest.raises(RuntimeError, match="CUDA is unusable"):
        resolve_device("cuda:1")


def test_torchs_warning_is_the_reason_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """What torch says when the driver is older than its CUDA build ends up in the error."""
    def unusable() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version "
                      "11040).", UserWarning, stacklevel=2)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", unusable)
    with pytest.raises(RuntimeError, match=r"torch's reason: CUDA initialization: The NVIDIA driver on your "
                                           r"system is too old \(found version 11040\)"):
        resolve_device("cuda")


@cpu_only
def test_auto_logs_what_it_chose_and_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="wsss_steps.networks.inputs"):
        assert resolve_device("auto") == torch.device("cpu")
    assert any(r.levelno == logging.INFO and "device auto: cpu" in r.getMessage()
               and "torch.cuda.is_available() is False" in r.getMessage() for r in caplog.records)


def test_auto_logs_cuda_where_it_is_usable(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with caplog.at_level(logging.INFO, logger="wsss_steps.networks.inputs"):
        assert resolve_device("auto") == torch.device("cuda")
    assert "device auto: cuda" in caplog.text and "1 GPU(s)" in caplog.text


def test_cpu_is_taken_as_given() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


@cpu_only
def test_a_step_given_cuda_fails_at_its_start(tmp_path: Path) -> None:
    """What a GPU job on a node with an unusable GPU does: exits at once, names the cause, writes nothing."""
    out = tmp_path / "shard.h5"
    result = subprocess.run([sys.executable, "-m", "wsss_steps.segment", "--model", str(tmp_path / "model.pt"),
                             "--manifest", str(tmp_path / "train.csv"), "--out", str(out), "--device", "cuda"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "CUDA is unusable" in result.stderr and "torch.cuda.is_available() is False" in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_claims_take_different_gpus_and_a_third_waits(tmp_path: Path) -> None:
    first, first_lock = claim_gpu(2, tmp_path)
    second, second_lock = claim_gpu(2, tmp_path)
    assert {first, second} == {0, 1}
    with pytest.raises(TimeoutError, match=f"all 2 GPUs are claimed.*{tmp_path}"):
        claim_gpu(2, tmp_path, timeout=0.2, poll_seconds=0.05)

    # A waiting claim gets the GPU as soon as its holder ends.
    threading.Timer(0.3, first_lock.close).start()
    began = time.monotonic()
    third, third_lock = claim_gpu(2, tmp_path, timeout=10, poll_seconds=0.05)
    assert third == first and time.monotonic() - began < 5
    second_lock.close()
    third_lock.close()


def test_another_process_holds_its_gpu_until_it_ends(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from wsss_steps.networks.inputs import claim_gpu; "
         "index, lock = claim_gpu(2, Path(sys.argv[1])); print(index, flush=True); time.sleep(60)", str(tmp_path)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        index, lock = claim_gpu(2, tmp_path)
        assert index == 1
        lock.close()
    finally:
        holder.kill()
        holder.wait()
    index, lock = claim_gpu(2, tmp_path, timeout=5)  # a killed process's claim is gone
    assert index == 0
    lock.close()


def test_plain_cuda_on_several_gpus_becomes_a_claimed_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("WSSS_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(inputs, "_CLAIMED", [])
    try:
        with caplog.at_level(logging.INFO, logger="wsss_steps.networks.inputs"):
            devices = [device_for_this_process(torch.device("cuda")) for _ in range(2)]
        assert devices == [torch.device("cuda", 0), torch.device("cuda", 1)] and chosen == [0, 1]
        assert "claimed GPU 0 of 2" in caplog.text and "claimed GPU 1 of 2" in caplog.text
        assert sorted(p.name for p in tmp_path.iterdir()) == ["wsss-gpu-0.lock", "wsss-gpu-1.lock"]
        # An explicit index, the CPU, or a machine where torch sees one GPU (a SLURM job's own): no claim.
        assert device_for_this_process(torch.device("cuda", 1)) == torch.device("cuda", 1)
        assert device_for_this_process(torch.device("cpu")) == torch.device("cpu")
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        assert device_for_this_process(torch.device("cuda")) == torch.device("cuda")
        assert len(inputs._CLAIMED) == 2
    finally:
        for handle in inputs._CLAIMED:
            handle.close()
