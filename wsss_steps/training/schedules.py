"""Step schedules of the training loop: poly learning-rate decay and linear ramps of loss weights."""

from __future__ import annotations

POLY_POWER = 0.9


def poly_lr_factor(step: int, total_steps: int, power: float = POLY_POWER) -> float:
    """IRN's and DeepLab's decay: lr_t = lr · (1 − t/T)^0.9, applied before step t."""
    return (1.0 - step / total_steps) ** power if step < total_steps else 0.0


def constant_factor(step: int, total_steps: int) -> float:
    return 1.0


def linear_ramp(step: int, total_steps: int, start: float, end: float, over: float = 1.0) -> float:
    """``start`` at step 0 rising (or falling) linearly to ``end`` at ``over`` · ``total_steps``,
    then ``end`` (P-NOC's λ ramps: over 1.0; Puzzle-CAM's α: over 0.5)."""
    ramp_steps = max(1.0, over * total_steps)
    fraction = min(1.0, step / ramp_steps)
    return start + (end - start) * fraction


LR_SCHEDULES = {"poly": poly_lr_factor, "constant": constant_factor}
