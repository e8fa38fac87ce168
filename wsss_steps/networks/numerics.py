"""The networks' arithmetic at inference: opt-in bf16 / fp16 autocast and the channels-last memory
format (the run-level config keys ``precision`` and ``channels_last``; steps' ``--precision`` and
``--channels-last``).

`Numerics` is what an inference step (seeds, AdvCAM's climb, segmentation, saliency and weight
maps) runs its networks with: the forward passes under ``torch.autocast`` (nothing for fp32), the
networks and their inputs in the channels-last format where asked. What the networks return is
cast to float32 before anything else (normalisation, merging, storage), so the maps keep their
dtype and format. Both are part of a map file's identity (`Numerics.params`: nothing at the
defaults, so maps made before these options keep theirs and nothing reruns).

The training loop (`wsss_steps.training.loop`) applies the same two settings to training.
"""

from __future__ import annotations

import argparse
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Numerics:
    """A precision (fp32, or bf16 / fp16 autocast) and whether the networks run channels-last."""

    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Numerics:
        """From a step's ``--precision`` / ``--channels-last`` (`cli.add_run_arguments`)."""
        return cls(getattr(args, "precision", "fp32"), bool(getattr(args, "channels_last", False)))

    @property
    def is_default(self) -> bool:
        return self.precision == "fp32" and not self.channels_last

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the autocast regions compute in (float32 for fp32)."""
        return AUTOCAST_DTYPES.get(self.precision, torch.float32)

    def params(self) -> dict[str, Any]:
        """The identity entries of a map file: none at the defaults."""
        entries: dict[str, Any] = {}
        if self.precision != "fp32":
            entries["precision"] = self.precision
        if self.channels_last:
            entries["channels_last"] = True
        return entries

    def autocast(self, device: torch.device | str) -> AbstractContextManager[Any]:
        """Autocast to the precision on ``device`` (a null context for fp32). A device type or dtype
        torch's autocast does not support is an error, not a silent fp32 run."""
        if self.precision == "fp32":
            return nullcontext()
        device_type = torch.device(device).type
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            context = torch.autocast(device_type=device_type, dtype=AUTOCAST_DTYPES[self.precision])
        if not getattr(context, "_enabled", True):
            reasons = "; ".join(str(w.message) for w in caught) or "autocast disabled itself"
            raise RuntimeError(f"precision {self.precision} is not supported on {device_type} by torch "
                               f"{torch.__version__}: {reasons}")
        return context

    def prepare(self, *modules: nn.Module) -> None:
        """Converts the modules' 4-d parameters and buffers to channels-last in place, where asked."""
        if self.channels_last:
            for module in modules:
                module.to(memory_format=torch.channels_last)

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) ``images`` in the channels-last format where asked; else as they are."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


FP32 = Numerics()
