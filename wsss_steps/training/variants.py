"""Classifier variants (docs/methods.md §1 and §3): CAM, Puzzle-CAM, OC-CSE, P-OC and P-NOC, each with
optional label smoothing.

Variants register by name (`register_variant`); ``classifiers.<name>.variant`` in the config and
``train_classifier --variant`` read `CLASSIFIER_VARIANTS`. Every variant ends as the same
`CamClassifier` (GAP over 1×1-conv CAMs), so every seed method and everything downstream reads
any of them. A variant supplies its loss, the settings it reads, and (P-NOC) a second network
trained after each of f's steps; never a loop: the loop is `wsss_steps.training.loop.train`.

The terms, with ℓ the multi-label soft-margin loss and ȳ the (optionally smoothed) labels:

- CAM: ℓ(p, ȳ); with ``loss: softmax`` (WSOL, docs/methods.md §1) the softmax cross-entropy of the
  image's one class instead (CAM only: the other variants' terms are multi-label);
- Puzzle-CAM adds ℓ(p^re, ȳ) + α ‖A − A^re‖₁, A^re the tile CAMs merged back in place, the L1
  mean over the positive classes' channels (zeros elsewhere, as Puzzle-CAM's "masking" re-loss);
  α rises linearly 0 → 4 over the first half of training;
- OC-CSE adds λ_cse ℓ(oc(x ⊙ (1 − ψ(A_r))), y∖{r}) for one random positive class r per image,
  ψ the ReLU'd, resized and max-normalised CAM (differentiable: the gradient reaches f through
  the erased image); oc is frozen (eval mode, no parameter gradients); λ_cse 0.3 → 1 over training;
- P-OC: both; P-NOC: P-OC whose oc ("noc") is trained after every k_noc-th step of f, on
  x ⊙ (1 − 1[ψ(A_r) > δ_noc]) (f's CAMs of that step, detached) with λ_noc ℓ(noc(·), ȳ), λ_noc
  0 → 1. During f's step noc's parameters do not require gradients, so f's loss computes none for
  them (P-NOC's code computes them and relies on zeroing them before noc's own step).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from wsss_steps.methods.erasure import (
    choose_positive_class,
    hard_erasure_mask,
    merge_tiles,
    smooth_labels,
    soft_erasure_map,
    tile_images,
)
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.training.schedules import linear_ramp, poly_lr_factor


@dataclass(frozen=True)
class VariantSettings:
    """The settings of every variant (each variant's `settings_used` names the ones it reads)."""

    label_smoothing: float = 0.0
    loss: str = "multilabel"         # multilabel (soft margin, WSSS) | softmax (cross-entropy, WSOL)
    puzzle_alpha: float = 4.0        # α at the end of its ramp
    puzzle_ramp: float = 0.5         # fraction of training over which α rises from 0
    cse_lambda: tuple[float, float] = (0.3, 1.0)   # λ_cse from, to (linear over training)
    cse_mask_norm: str = "batch"     # ψ's normalisation: batch (OC-CSE's code) | image
    noc_every: int = 1               # k_noc: noc trains after every k-th step of f
    noc_delta: float = 0.2           # δ_noc
    noc_lambda: tuple[float, float] = (0.0, 1.0)   # λ_noc from, to
    noc_mask: str = "reference_code"  # reference_code (erase ψ > δ) | methods_formula


class ClassifierVariant:
    """A variant's loss on f's batch and, where it has one, its second network's step.

    ``loss(model, images, labels, step, total_steps)`` returns the loss and named parts, numbers
    or 0-d tensors left on the device (averaged into the epoch's metrics row); ``after_step(step, total_steps)`` runs after f's
    optimiser step and returns more parts; ``extra_state()`` is what the checkpoint must hold
    besides f and its optimiser.
    """

    name: ClassVar[str] = ""
    puzzle: ClassVar[bool] = False
    cse: ClassVar[bool] = False
    noc: ClassVar[bool] = False

    def __init__(self, settings: VariantSettings, seed: int = 0, ordinary: CamClassifier | None = None,
                 ordinary_optimizer: torch.optim.Optimizer | None = None,
                 ordinary_base_lrs: tuple[float, ...] = (), ordinary_train_mode: Any = None):
        if self.needs_ordinary() and ordinary is None:
            raise ValueError(f"classifier variant {self.name} needs an ordinary classifier (--ordinary)")
        if self.noc and ordinary_optimizer is None:
            raise ValueError("p_noc trains its ordinary classifier: it needs that network's optimiser")
        self.settings = settings
        self.seed = seed
        self.ordinary = ordinary
        self.ordinary_optimizer = ordinary_optimizer
        self.ordinary_base_lrs = tuple(ordinary_base_lrs)
        self.ordinary_train_mode = ordinary_train_mode
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if ordinary is not None:
            ordinary.eval()
            ordinary.requires_grad_(False)

    @classmethod
    def needs_ordinary(cls) -> bool:
        return cls.cse

    @classmethod
    def settings_used(cls, settings: VariantSettings) -> dict[str, Any]:
        """The settings that shape this variant's weights (the checkpoint's identity)."""
        names = ["label_smoothing"]
        if settings.loss != "multilabel":  # the key appears only off its default: earlier models keep their identity
            names.append("loss")
        if cls.puzzle:
            names += ["puzzle_alpha", "puzzle_ramp"]
        if cls.cse:
            names += ["cse_lambda", "cse_mask_norm"]
        if cls.noc:
            names += ["noc_every", "noc_delta", "noc_lambda", "noc_mask"]
        values = asdict(settings)
        return {name: list(values[name]) if isinstance(values[name], tuple) else values[name] for name in names}

    def extra_state(self) -> Mapping[str, Any]:
        if not self.noc:
            return {}
        return {"noc": self.ordinary, "noc_optimizer": self.ordinary_optimizer}

    def _step_generator(self, step: int) -> torch.Generator:
        # The class choice depends on (seed, step) only: a resumed run draws the same classes.
        digest = hashlib.sha256(f"variant-choice/{self.seed}/{step}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    def loss(self, model: CamClassifier, images: torch.Tensor, labels: torch.Tensor, step: int,
             total_steps: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        s = self.settings
        logits, cams = model.forward_with_cams(images)
        if s.loss == "softmax":
            # WSOL (docs/methods.md §1): one class per image; ε spreads over the C classes as in torch.
            class_loss = F.cross_entropy(logits, labels.argmax(dim=1), label_smoothing=s.label_smoothing)
            return class_loss, {}
        targets = smooth_labels(labels, s.label_smoothing)
        class_loss = F.multilabel_soft_margin_loss(logits, targets)
        loss = class_loss
        parts: dict[str, float | torch.Tensor] = {}
        if self.puzzle or self.cse:
            parts["class_loss"] = class_loss.detach()
        if self.puzzle:
            _, tile_cams = model.forward_with_cams(tile_images(images))
            merged = merge_tiles(tile_cams, images.shape[0])
            if merged.shape != cams.shape:
                raise ValueError(f"puzzle: the merged tile CAMs are {tuple(merged.shape[2:])}, the image's "
                                 f"{tuple(cams.shape[2:])}; use a crop divisible by 2 × the output stride")
            puzzle_class_loss = F.multilabel_soft_margin_loss(merged.mean(dim=(2, 3)), targets)
            reconstruction = ((cams - merged).abs() * (labels > 0).float()[:, :, None, None]).mean()
            alpha = linear_ramp(step, total_steps, 0.0, s.puzzle_alpha, over=s.puzzle_ramp)
            loss = loss + puzzle_class_loss + alpha * reconstruction
            parts.update(puzzle_class_loss=puzzle_class_loss.detach(), reconstruction_loss=reconstruction.detach(),
                         alpha=alpha)
        if self.cse:
            chosen = choose_positive_class(labels, self._step_generator(step))
            psi = soft_erasure_map(cams, chosen, tuple(images.shape[2:]), s.cse_mask_norm)
            others = (labels - chosen).clamp(min=0)
            assert self.ordinary is not None
            ordinary_logits = self.ordinary(images * (1.0 - psi))
            erased_loss = F.multilabel_soft_margin_loss(ordinary_logits, smooth_labels(others, s.label_smoothing))
            weight = linear_ramp(step, total_steps, *s.cse_lambda)
            loss = loss + weight * erased_loss
            parts.update(erased_loss=erased_loss.detach(), cse_lambda=weight)
            if self.noc:
                self._pending = (images.detach(), cams.detach(), chosen, targets.detach())
        return loss, parts

    def after_step(self, step: int, total_steps: int) -> dict[str, float | torch.Tensor]:
        """P-NOC's adversarial step of noc on f's step ``step`` (every k_noc-th step)."""
        if not self.noc or self._pending is None:
            return {}
        images, cams, chosen, targets = self._pending
        self._pending = None
        s = self.settings
        if (step + 1) % s.noc_every:
            return {}
        assert self.ordinary is not None and self.ordinary_optimizer is not None
        erased = hard_erasure_mask(cams, chosen, tuple(images.shape[2:]), s.noc_delta, s.noc_mask)
        weight = linear_ramp(step, total_steps, *s.noc_lambda)
        factor = poly_lr_factor(step, total_steps)
        for group, base_lr in zip(self.ordinary_optimizer.param_groups, self.ordinary_base_lrs, strict=True):
            group["lr"] = base_lr * factor
        self.ordinary.requires_grad_(True)
        if self.ordinary_train_mode is not None:
            self.ordinary_train_mode(self.ordinary)
        else:
            self.ordinary.train()
        try:
            noc_loss = weight * F.multilabel_soft_margin_loss(self.ordinary(images * (1.0 - erased)), targets)
            self.ordinary_optimizer.zero_grad(set_to_none=True)
            noc_loss.backward()
            self.ordinary_optimizer.step()
        finally:
            self.ordinary.eval()
            self.ordinary.requires_grad_(False)
        return {"noc_loss": noc_loss.detach(), "noc_lambda": weight, "erased_fraction": erased.mean().detach()}


# The schema's enum of classifiers.<name>.variant equals these names (tests/test_structure.py):
# the Snakefile validates the config without importing torch.
CLASSIFIER_VARIANTS: dict[str, type[ClassifierVariant]] = {}


def register_variant(cls: type[ClassifierVariant]) -> type[ClassifierVariant]:
    if not cls.name or cls.name in CLASSIFIER_VARIANTS:
        raise ValueError(f"classifier variant name {cls.name!r} is empty or registered twice")
    CLASSIFIER_VARIANTS[cls.name] = cls
    return cls


@register_variant
class CamVariant(ClassifierVariant):
    """``cam``: multi-label soft-margin loss on the GAP logits (docs/methods.md §1)."""

    name = "cam"


@register_variant
class PuzzleVariant(ClassifierVariant):
    """``puzzle``: Puzzle-CAM (docs/methods.md §3)."""

    name = "puzzle"
    puzzle = True


@register_variant
class OcCseVariant(ClassifierVariant):
    """``oc_cse``: OC-CSE with a frozen ordinary classifier (docs/methods.md §3)."""

    name = "oc_cse"
    cse = True


@register_variant
class POcVariant(ClassifierVariant):
    """``p_oc``: Puzzle-CAM + OC-CSE (docs/methods.md §3)."""

    name = "p_oc"
    puzzle = True
    cse = True


@register_variant
class PNocVariant(ClassifierVariant):
    """``p_noc``: P-OC whose ordinary classifier is trained adversarially (docs/methods.md §3)."""

    name = "p_noc"
    puzzle = True
    cse = True
    noc = True
