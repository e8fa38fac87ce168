"""The one training loop: schedules, per-epoch weights, extra checkpointed state, bitwise resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from wsss_steps.training.checkpoints import settings_hash
from wsss_steps.training.loop import LoopSettings, Trainee, train
from wsss_steps.training.schedules import linear_ramp, poly_lr_factor


class Points(torch.utils.data.Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 3, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class NoisyPoints(Points):
    """Points jittered by (epoch, index), as the augmentation draws: a worker that missed the
    epoch would hand out another epoch's samples."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(3, generator=torch.Generator().manual_seed(1000 * self.epoch + index))
        return self.x[index] + 0.1 * noise, self.y[index]


def _run(tmp_path: Path, epochs: int = 4, stop_after: int | None = None, keep: bool = False,
         settings: dict | None = None, workers: int = 0, noisy: bool = False, precision: str = "fp32",
         tensor_parts: bool = False, validate_every: int | None = None) -> tuple[nn.Module, nn.Module, object]:
    torch.manual_seed(0)
    model, second = nn.Linear(3, 1), nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    second_optimizer = torch.optim.SGD(second.parameters(), lr=0.05)
    dataset = NoisyPoints() if noisy else Points()

    def step(batch: tuple[torch.Tensor, torch.Tensor], global_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        # A second network updated in the step (as P-NOC's adversary), its state checkpointed too.
        second_loss = (second(x).squeeze(1) - y).pow(2).mean()
        second_optimizer.zero_grad()
        second_loss.backward()
        second_optimizer.step()
        return (model(x).squeeze(1) - y).pow(2).mean(), \
            {"second": second_loss.detach() if tensor_parts else second_loss.item()}

    @torch.no_grad()
    def validate(epoch: int) -> dict[str, float]:
        model.eval()
        return {"val": (model(dataset.x).squeeze(1) - dataset.y).pow(2).mean().item()}

    trainee = Trainee(model, optimizer, [0.1], dataset, step,
                      validate=validate if validate_every is not None else None,
                      extra_state={"second": second, "second_optimizer": second_optimizer})
    plan = LoopSettings(name="toy", epochs=epochs, batch_size=4, seed=3, device=torch.device("cpu"),
                        settings=settings or {"toy": 1}, checkpoint_dir=tmp_path / "ckpt",
                        stop_after_epochs=stop_after, keep_epoch_weights=keep, metrics_path=tmp_path / "m.csv",
                        metric_columns=("epoch", "step", "lr", "loss", "second", "val", "seconds"),
                        num_workers=workers, precision=precision, validate_every=1 if validate_every is None else validate_every)
    return model, second, train(trainee, plan)


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def test_schedules_at_first_middle_and_last_step() -> None:
    assert poly_lr_factor(0, 100) == 1.0 and poly_lr_factor(100, 100) == 0.0
    assert poly_lr_factor(50, 100) == pytest.approx(0.5 ** 0.9)
    assert [linear_ramp(s, 100, 0.3, 1.0) for s in (0, 50, 100)] == pytest.approx([0.3, 0.65, 1.0])
    # Puzzle-CAM's α: 0 → 4 over the first half, then held.
    assert [linear_ramp(s, 100, 0.0, 4.0, over=0.5) for s in (0, 25, 50, 99)] == pytest.approx([0, 2, 4, 4])


def test_killed_run_resumes_bitwise_with_its_extra_state(tmp_path: Path) -> None:
    whole, whole_second, outcome = _run(tmp_path / "whole")
    assert outcome.finished and [row["epoch"] for row in outcome.history] == [1, 2, 3, 4]
    _, _, stopped = _run(tmp_path / "split", stop_after=2)
    assert not stopped.finished and len(stopped.history) == 2
    resumed, resumed_second, outcome = _run(tmp_path / "split")
    assert outcome.finished and [row["epoch"] for row in outcome.history] == [1, 2, 3, 4]
    for a, b in ((whole, resumed), (whole_second, resumed_second)):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)
    assert (tmp_path / "whole" / "m.csv").read_text().splitlines()[1].split(",")[:5] == \
        (tmp_path / "split" / "m.csv").read_text().splitlines()[1].split(",")[:5]


def test_other_settings_start_fresh_and_every_epoch_can_be_kept(tmp_path: Path) -> None:
    _run(tmp_path, stop_after=1)
    model, _, outcome = _run(tmp_path, settings={"toy": 2}, keep=True)
    assert [row["epoch"] for row in outcome.history] == [1, 2, 3, 4]  # not resumed
    kept = sorted(p.name for p in (tmp_path / "ckpt").glob("epoch-*.pt"))
    assert kept == ["epoch-001.pt", "epoch-002.pt", "epoch-003.pt", "epoch-004.pt"]
    last = torch.load(tmp_path / "ckpt" / "epoch-004.pt", weights_only=True)
    assert last["epoch"] == 4 and last["settings_hash"] == outcome.settings_hash
    assert torch.equal(last["model"]["weight"], model.weight.detach())


def test_worker_processes_give_the_same_weights_and_resume_bitwise(tmp_path: Path) -> None:
    alone, alone_second, outcome = _run(tmp_path / "alone", noisy=True)
    workers, workers_second, _ = _run(tmp_path / "workers", noisy=True, workers=2)
    assert _same(alone, workers) and _same(alone_second, workers_second)
    # The epoch reaches the persistent workers: epoch 2's samples are not epoch 1's again.
    assert not _same(alone, _run(tmp_path / "clean", noisy=False)[0])
    _, _, stopped = _run(tmp_path / "split", noisy=True, workers=2, stop_after=2)
    assert not stopped.finished
    resumed, resumed_second, _ = _run(tmp_path / "split", noisy=True, workers=2)
    assert _same(alone, resumed) and _same(alone_second, resumed_second)
    assert [line.rsplit(",", 1)[0] for line in (tmp_path / "alone" / "m.csv").read_text().splitlines()] == \
        [line.rsplit(",", 1)[0] for line in (tmp_path / "split" / "m.csv").read_text().splitlines()]
    assert outcome.settings_hash == settings_hash({"toy": 1})  # the worker count is no part of it


def test_validation_every_few_epochs_and_the_last_leaves_the_weights_alone(tmp_path: Path) -> None:
    every, _, each = _run(tmp_path / "every", epochs=7, validate_every=1)
    sparse, _, few = _run(tmp_path / "sparse", epochs=7, validate_every=3)
    assert _same(every, sparse) and few.settings_hash == each.settings_hash
    assert [row["epoch"] for row in few.history if "val" in row] == [3, 6, 7]
    assert few.validation == each.validation  # the last epoch's, which both validate
    rows = (tmp_path / "sparse" / "m.csv").read_text().splitlines()
    val = rows[0].split(",").index("val")
    assert [bool(line.split(",")[val]) for line in rows[1:]] == [False, False, True, False, False, True, True]
    with pytest.raises(ValueError, match="validate_every"):
        _run(tmp_path / "zero", validate_every=0)


def test_parts_left_on_the_device_give_the_rows_of_python_floats(tmp_path: Path) -> None:
    """The loop sums the loss and tensor parts on the device in float64: the metrics rows are
    those of a sum of Python floats (the parts as numbers)."""
    _run(tmp_path / "floats", noisy=True)
    _run(tmp_path / "tensors", noisy=True, tensor_parts=True)
    floats, tensors = ([line.rsplit(",", 1)[0] for line in (tmp_path / name / "m.csv").read_text().splitlines()]
                       for name in ("floats", "tensors"))
    assert floats == tensors and len(floats) == 5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_trains_is_part_of_the_identity_and_resumes(tmp_path: Path, precision: str) -> None:
    whole, _, outcome = _run(tmp_path / "whole", precision=precision)
    assert outcome.finished and all(math.isfinite(float(row["loss"])) for row in outcome.history)
    assert outcome.settings_hash == settings_hash({"toy": 1, "precision": precision})
    assert outcome.settings_hash != _run(tmp_path / "fp32", epochs=1)[2].settings_hash
    checkpoint = torch.load(tmp_path / "whole" / "ckpt" / "last.pt", weights_only=True)
    assert ("grad_scaler" in checkpoint) == (precision == "fp16")
    _run(tmp_path / "split", precision=precision, stop_after=2)
    resumed, _, _ = _run(tmp_path / "split", precision=precision)
    assert _same(whole, resumed)
    # An fp32 run does not resume from this precision's checkpoint (and the reverse).
    _, _, fresh = _run(tmp_path / "split")
    assert [row["epoch"] for row in fresh.history] == [1, 2, 3, 4]


def test_an_unknown_precision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        _run(tmp_path, precision="fp8")
