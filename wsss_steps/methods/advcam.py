"""AdvCAM and AdvCAM-Sal seeds: CAMs of anti-adversarially climbed images (docs/methods.md §2).

For every label class c of an image, independently, start from the clean image x⁰ (and from its
horizontal flip) and climb for t = 1..T::

    A^{t-1} = CAM_c(x^{t-1})
    M       = 1[ψ(A^{t-1}) > τ]                 ψ(A) = ReLU(A) / max ReLU(A), per image and class
    L       = y_c(x^{t-1}) − Σ_{k≠c} y_k(x^{t-1}) − λ ‖M ⊙ |A^{t-1} − A⁰|‖₁
    x^t     = x^{t-1} + ξ ∇_x L / max |∇_x L|

with y the logits before the sigmoid. The localization map of a scale is Σ_{t=0}^{T-1} ReLU(A^t)
(the clean CAM included); flips and scales are merged and max-normalised exactly as the CAM seeds
(`wsss_steps.methods.cams.ScaleMerger`), so the output has the CAM seeds' format: ``cam`` (K, H, W),
``cam_stride4`` (K, ⌈H/4⌉, ⌈W/4⌉) and ``keys``, one map per label class. The update that would
produce x^T feeds no map, so it is skipped (T maps, T−1 updates); T = 0 is taken as "no climbing"
and gives the CAM seeds of `multiscale_cams`.

AdvCAM-Sal (method ``advcam_sal``): the background of a saliency map joins the restricting mask,
M = 1[ψ(A) > τ] ∪ 1[sal < δ] with the saliency map resized to the CAM's resolution at each scale,
so the attribution cannot grow outside salient objects.

Defaults are the paper's form (``AdvCamConfig()`` / ``--preset paper``): T = 27, ξ = 0.08, λ = 7,
τ = 0.5, scales (1.0, 0.5, 1.5, 2.0) with flip, on the attribution scale λ was tuned on
(``penalty_scale``, below). The public reference code (jbeomlee93/AdvCAM, ``obtain_CAM_masking.py``)
differs in ways that change results; each is a named option, and ``--preset reference_code`` turns
them all on:

- ``other_classes``: ``all`` (default) sums the suppressed logits over every class k ≠ c — the
  paper defines the sum over C∖c with C "the set of all classes", and the reference code does the
  same; ``labels`` suppresses only the image's other label classes.
- ``logits``: ``plain`` (default) climbs the classifier's logits (GAP of the CAMs); ``relu_gap``
  climbs GAP(ReLU(CAM)) as the reference code does.
- ``attribution``: ``cam`` (default) uses the CAM itself as A; ``gradcam`` uses the map the
  reference code climbs with, Grad-CAM at the last stage. For a GAP + 1×1 head that is
  ReLU(CAM_c) · n⁺_b / (D⁺_c · Σ_{b'} n⁺_{b'}), with n⁺_b the number of pixels where sample b's
  CAM_c is positive, the sum over the sample and its flip, and D⁺_c the number of positive
  classifier weights of c (the reference's ``gap2d_pos`` divides by the count of positive
  gradient entries).
- ``penalty_scale``: that factor (≈ 1/(n D⁺_c) with n = 2 samples per climb with flip, else 1:
  about 1/2000 for ResNet-50, 1/1300 for EfficientNet-Lite0) is the scale λ = 7 was tuned against
  (docs/methods.md §2). ``reference`` (default) keeps it: the penalty enters L as λ/(n D⁺_c) · ‖M ⊙ |A − A⁰|‖₁,
  so λ = 7 balances the logit term and the penalty as in the paper (`penalty_logit_ratio` at the
  first penalised step equals the reference code's with the paper's logits; tests/test_advcam.py)
  while the maps stay Σ_t ReLU(CAM^t) and T = 0 gives the CAM seeds. ``none`` puts λ on the raw
  CAM: with λ = 7 the penalty's gradient is then 40–120× the logit term's on real photos (about
  1000× the default's) and the climb barely moves; that form needs λ ≈ 7/(n D⁺_c) (≈ 0.0035 for
  ResNet-50, 0.005 for Lite0) for the same balance. With ``attribution: gradcam`` the attribution
  carries the factor itself and ``penalty_scale`` is not applied.
- ``merge_flips_in_loss``: false (default) climbs an image and its flip as two independent
  samples; true computes the mask and the penalty on the merged map A(x) + flip(A(flip x)) and
  adds both samples' logit terms into one loss, as the reference code does.
- ``grad_normalization``: ``per_sample`` (default) divides each sample's gradient by its own
  max |∇|; ``flip_pair`` divides by the max over the image and its flip — the reference code's
  "whole batch", whose batch is exactly that pair.
- ``clamp_to_input_range``: false (default); true clamps x^t to [min, max] of x^{t-1} over the
  image and its flip (the reference's batch), as the reference code does.
- ``small_scale_schedule``: ``full`` (default) climbs T steps at every scale. ``half`` is the
  reference code's intent at scales below 1 (0.5 by default): T//2 steps and the map weighted ×2
  (T > 10; T < 6: T steps, ×1; otherwise 5 steps, ×1). ``half_reference`` is what the reference
  code computes: the same steps, but its ×2 carries over to every later scale, and since 0.5 is
  its first scale all scales end up with the same weight.

Batching is an implementation detail: the climbs of all label classes, both flips and — when they
have the same size — several images run as one batch of at most ``batch_budget`` samples and
``batch_pixels`` input pixels per forward, with BatchNorm in eval mode, the model's parameters
frozen, and one backward pass per step of the sum of the per-sample objectives (each sample's
gradient depends on its own objective only). Which images share a batch changes the maps by float
rounding only, but the climb amplifies it: batch-1 and batch-N convolutions round differently
(≤ 1.1e-5 after T ≤ 6 steps in the tests; up to 0.2 of the max on single pixels after 27 steps in
`benchmarks/advcam.py`, 0 in float64). So the budgets stay in the rule's params: a changed budget
reruns the seeds rather than mixing two roundings in one file. `advcam_maps_reference` is the
straightforward loop it is checked against (``--reference`` runs it).

Numerics. (1) Where A^{t-1} is within rounding of A⁰ (|A − A⁰| ≤ 1e-5 · max|A⁰|) the penalty's
subgradient is taken as 0, as |·|'s is at exactly 0: the penalty pulls masked pixels back onto
A⁰, so they sit there often, and rounding noise must not pick the sign of their gradient.
(2) The climb amplifies rounding differences: a ReLU whose input lies within rounding of 0 flips
in one computation and not in another, the normalised step carries the difference on, and more
flips follow. Convolutions of batch 1 and batch N round differently, so in float32 the batched
maps match the loop to ~1e-6 for a few steps but drift apart by up to ~1e-1 in places after 27
steps (both are equally valid AdvCAM maps); in float64 they agree exactly. The same holds between
devices or thread counts. (3) Precision (`Numerics`, the run-level keys ``precision`` and
``channels_last``; opt-in): with bf16 / fp16 the forward passes (features, CAMs, logits) run under
autocast and their outputs are cast to float32 at once, so the penalty, the maps and the gradient
ascent step x^t = x^{t-1} + ξ ∇/max|∇| stay float32 (∇_x comes back float32, as x is); the dead
zone of (1) widens to the autocast dtype's epsilon, its rounding. The climb amplifies the
coarser rounding as it does batch-size rounding (`benchmarks/advcam_precision.py` measures the
seeds' mIoU against fp32's on MSRC). On the CPU the climbing input is channels-last at any setting
(oneDNN is faster so; `climb`); ``channels_last`` converts the network too, on every device.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import ImageRecord
from wsss_steps.methods.cams import ScaleMerger, resize_batch, strided_size
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.numerics import FP32, Numerics
from wsss_steps.store.maps import MapReader

log = logging.getLogger(__name__)

GRAD_EPS = 1e-12  # the reference code's guard in ∇ / max|∇|
SIGN_DEAD_ZONE = 1e-5  # relative to max|A⁰|; see "Numerics" above

OTHER_CLASSES = ("all", "labels")
LOGITS = ("plain", "relu_gap")
ATTRIBUTIONS = ("cam", "gradcam")
PENALTY_SCALES = ("reference", "none")
GRAD_NORMALIZATIONS = ("per_sample", "flip_pair")
SMALL_SCALE_SCHEDULES = ("full", "half", "half_reference")
PRESETS = ("paper", "reference_code")


@dataclass(frozen=True)
class AdvCamConfig:
    """AdvCAM settings; the defaults are the paper's form (see the module docstring)."""

    steps: int = 27                    # T
    step_size: float = 0.08            # ξ
    penalty_weight: float = 7.0        # λ
    mask_threshold: float = 0.5        # τ
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    other_classes: str = "all"
    logits: str = "plain"
    attribution: str = "cam"
    penalty_scale: str = "reference"  # λ on the reference code's attribution scale (tuned there)
    merge_flips_in_loss: bool = False
    grad_normalization: str = "per_sample"
    clamp_to_input_range: bool = False
    small_scale_schedule: str = "full"
    saliency_threshold: float = 0.10   # δ, AdvCAM-Sal only
    batch_budget: int = 16             # max samples per forward; the maps change by float rounding only
    batch_pixels: int = 2**18          # max input pixels per forward (≥ one climb); likewise

    def __post_init__(self) -> None:
        choices = {"other_classes": OTHER_CLASSES, "logits": LOGITS, "attribution": ATTRIBUTIONS,
                   "penalty_scale": PENALTY_SCALES,
                   "grad_normalization": GRAD_NORMALIZATIONS,
                   "small_scale_schedule": SMALL_SCALE_SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"advcam {name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.steps < 0:
            raise ValueError(f"advcam steps must be ≥ 0, not {self.steps}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"advcam scales must be positive, not {self.scales}")
        if self.batch_budget < 1 or self.batch_pixels < 1:
            raise ValueError(f"advcam batch_budget and batch_pixels must be ≥ 1, not "
                             f"{self.batch_budget}, {self.batch_pixels}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    @classmethod
    def preset(cls, name: str = "paper", **overrides: Any) -> AdvCamConfig:
        """``paper`` (the defaults) or ``reference_code`` (every reference-code option on)."""
        if name not in PRESETS:
            raise ValueError(f"advcam preset must be one of {', '.join(PRESETS)}, not {name!r}")
        settings: dict[str, Any] = {}
        if name == "reference_code":
            settings = dict(other_classes="all", logits="relu_gap", attribution="gradcam",
                            merge_flips_in_loss=True, grad_normalization="flip_pair",
                            clamp_to_input_range=True, small_scale_schedule="half_reference")
        settings.update(overrides)
        return cls(**settings)

    @property
    def samples_per_climb(self) -> int:
        return 2 if self.flip else 1

    def climbs_per_batch(self, height: int, width: int) -> int:
        """How many climbs of (height × width) inputs one forward holds under both budgets."""
        pair = self.samples_per_climb
        return max(1, min(self.batch_budget // pair, self.batch_pixels // (pair * height * width)))

    def schedule(self, scale: float) -> tuple[int, float]:
        """(steps, map weight) at ``scale``."""
        if self.small_scale_schedule == "full" or scale >= 1.0:
            return self.steps, 1.0
        if self.steps > 10:
            steps, weight = self.steps // 2, 2.0
        elif self.steps < 6:
            steps, weight = self.steps, 1.0
        else:
            steps, weight = 5, 1.0
        return steps, (weight if self.small_scale_schedule == "half" else 1.0)

    def params(self, saliency: bool = False) -> dict[str, Any]:
        """The settings that determine the maps (for the map file's attributes)."""
        params = dataclasses.asdict(self)
        params.pop("batch_budget")
        params.pop("batch_pixels")
        if not saliency:
            params.pop("saliency_threshold")
        params["scales"] = list(self.scales)
        return params


@contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm statistics frozen) and no parameter gradients; restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the reference loop, which backpropagates as plain training code does
    (parameter gradients included); the mode and the gradients are restored afterwards."""
    was_training = model.training
    grads = [p.grad for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        for parameter, grad in zip(model.parameters(), grads, strict=True):
            parameter.grad = grad
        model.train(was_training)


def _relu_max_ratio(maps: torch.Tensor) -> torch.Tensor:
    """ψ(A) = ReLU(A) / max ReLU(A) over the last two dims (0 where the max is 0)."""
    positive = F.relu(maps)
    peak = positive.flatten(-2).amax(-1)[..., None, None]
    return torch.where(peak > 0, positive / torch.where(peak > 0, peak, 1.0), 0.0)


def _background(saliency: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """1[sal < δ] for (N, H, W) saliency maps resized (bilinear) to the CAM size (N, h, w)."""
    resized = F.interpolate(saliency[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return resized[:, 0] < threshold


# --------------------------------------------------------------------------------------------
# Batched climbing


def climb(model: CamClassifier, images: torch.Tensor, classes: torch.Tensor,
          coefficients: torch.Tensor, config: AdvCamConfig, steps: int,
          saliency: torch.Tensor | None = None, numerics: Numerics = FP32) -> torch.Tensor:
    """Climbs G images (already at their scale) for one class each, all in one batch.

    ``images`` (G, 3, h, w); ``classes`` (G,) the class each climb raises; ``coefficients``
    (G, C) the logit weights of L (+1 for the class, −1 for the suppressed ones); ``saliency``
    (G, H, W) in [0, 1] for AdvCAM-Sal. Returns the flip-merged Σ_t ReLU(A^t) maps (G, h', w') at
    the CAM resolution, unnormalised. Call inside `frozen_eval`. The forward passes run under
    ``numerics`` (autocast), everything else in float32 (module docstring, "Numerics").
    """
    pair = config.samples_per_climb
    groups = images.shape[0]
    if pair == 2:
        x = torch.stack([images, images.flip(-1)], dim=1).flatten(0, 1)
    else:
        x = images
    if numerics.channels_last or (steps > 1 and x.device.type == "cpu"):
        # oneDNN's convolutions and their backward run ~10 % faster on NHWC input here; without
        # climbing (T ≤ 1) the layout of `multiscale_cams` keeps the clean CAMs bit for bit equal.
        x = x.contiguous(memory_format=torch.channels_last)
    dead_zone = _dead_zone(numerics)
    target = classes.repeat_interleave(pair)
    coefficients = coefficients.repeat_interleave(pair, dim=0)
    rows = torch.arange(x.shape[0], device=x.device)
    initial: torch.Tensor | None = None
    background: torch.Tensor | None = None
    total_map: torch.Tensor | None = None
    maps = max(steps, 1)
    for t in range(maps):
        climbing = t < maps - 1
        with torch.set_grad_enabled(climbing):
            x_var = x.detach().requires_grad_(climbing)
            with numerics.autocast(x.device):
                features = model.features(x_var)
                cams = model.cams_from_features(features)
            cams = cams.float()  # the same tensor in fp32
            attribution = cams[rows, target]
            if config.attribution == "gradcam":
                attribution = _gradcam_scaling(model, attribution, target, pair)
            if t == 0:
                initial = attribution.detach()
                if saliency is not None:
                    background = _background(saliency, tuple(cams.shape[-2:]), config.saliency_threshold)
            step_map = F.relu(attribution.detach())
            total_map = step_map if total_map is None else total_map + step_map
            if not climbing:
                break
            if config.logits == "plain":
                with numerics.autocast(x.device):
                    logits = model.logits_from_features(features)
                logits = logits.float()
            else:
                logits = F.relu(cams).mean(dim=(2, 3))
            objective = (coefficients * logits).sum()
            assert initial is not None
            penalty = _batched_penalty(attribution, initial, background, config, groups, pair,
                                       _penalty_weights(model, target, config), dead_zone)
            (grad,) = torch.autograd.grad(objective - config.penalty_weight * penalty, x_var)
        x = _batched_step(x, grad, config, groups, pair)
    assert total_map is not None
    total_map = total_map.reshape(groups, pair, *total_map.shape[-2:])
    return total_map[:, 0] + total_map[:, 1].flip(-1) if pair == 2 else total_map[:, 0]


def _dead_zone(numerics: Numerics) -> float:
    """|A − A⁰| within this fraction of max|A⁰| is rounding (module docstring, "Numerics")."""
    if numerics.precision == "fp32":
        return SIGN_DEAD_ZONE
    return max(SIGN_DEAD_ZONE, torch.finfo(numerics.dtype).eps)


def _gradcam_scaling(model: CamClassifier, attribution: torch.Tensor, target: torch.Tensor,
                     pair: int) -> torch.Tensor:
    """The reference code's Grad-CAM of a GAP + 1×1 head: ReLU(CAM_c) · n⁺_b / (D⁺_c Σ_pair n⁺)."""
    with torch.no_grad():
        positive_weights = (model.classifier.weight.flatten(1) > 0).sum(1).to(attribution.dtype)
        positive_pixels = (attribution > 0).flatten(1).sum(1).to(attribution.dtype)
        pair_pixels = positive_pixels.view(-1, pair).sum(1).repeat_interleave(pair)
        factor = positive_pixels / (positive_weights[target] * pair_pixels + GRAD_EPS)
    return F.relu(attribution) * factor[:, None, None]


def _penalty_weights(model: CamClassifier, target: torch.Tensor, config: AdvCamConfig) -> torch.Tensor | None:
    """Per sample 1/(n D⁺_c) under ``penalty_scale: reference`` with the raw CAM, else None (weight 1)."""
    if config.penalty_scale == "none" or config.attribution == "gradcam":
        return None
    positive_weights = (model.classifier.weight.flatten(1) > 0).sum(1).to(torch.float32)
    return 1.0 / (config.samples_per_climb * positive_weights[target].clamp(min=1))


def _batched_penalty(attribution: torch.Tensor, initial: torch.Tensor, background: torch.Tensor | None,
                     config: AdvCamConfig, groups: int, pair: int,
                     weights: torch.Tensor | None = None, dead_zone: float = SIGN_DEAD_ZONE) -> torch.Tensor:
    """Σ over climbs of w ‖M ⊙ |A − A⁰|‖₁ (per sample, or on the flip-merged map); ``weights`` (per
    sample, equal within a flip pair) default to 1; changes within ``dead_zone`` · max|A⁰| count 0."""
    if config.merge_flips_in_loss:
        attribution = attribution.reshape(groups, pair, *attribution.shape[-2:])
        initial = initial.reshape(groups, pair, *initial.shape[-2:])
        if pair == 2:
            attribution = attribution[:, 0] + attribution[:, 1].flip(-1)
            initial = initial[:, 0] + initial[:, 1].flip(-1)
        else:
            attribution, initial = attribution[:, 0], initial[:, 0]
    elif background is not None and pair == 2:
        background = torch.stack([background, background.flip(-1)], dim=1).flatten(0, 1)
    with torch.no_grad():
        mask = _relu_max_ratio(attribution) > config.mask_threshold
        if background is not None:
            mask = mask | background
        change = (attribution - initial).abs()
        mask = mask & (change > dead_zone * initial.abs().flatten(1).amax(1)[:, None, None])
    per_map = (mask * (attribution - initial).abs()).flatten(1).sum(1)
    if weights is None:
        return per_map.sum()
    if per_map.shape[0] != weights.shape[0]:  # flip-merged maps: one weight per pair
        weights = weights.view(-1, pair)[:, 0]
    return (per_map * weights.to(per_map.dtype)).sum()


def _batched_step(x: torch.Tensor, grad: torch.Tensor, config: AdvCamConfig, groups: int,
                  pair: int) -> torch.Tensor:
    """x + ξ ∇ / max|∇| (per sample or per flip pair), optionally clamped to x's range per pair."""
    if config.grad_normalization == "per_sample":
        peak = grad.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    else:
        peak = grad.abs().reshape(groups, -1).amax(1).repeat_interleave(pair).view(-1, 1, 1, 1)
    updated = x + config.step_size * (grad / (peak + GRAD_EPS))
    if config.clamp_to_input_range:
        by_pair = x.reshape(groups, -1)
        low = by_pair.amin(1).repeat_interleave(pair).view(-1, 1, 1, 1)
        high = by_pair.amax(1).repeat_interleave(pair).view(-1, 1, 1, 1)
        updated = torch.minimum(torch.maximum(updated, low), high)
    return updated


def penalty_logit_ratio(model: CamClassifier, image: torch.Tensor, cls: int, config: AdvCamConfig,
                        keys: Sequence[int] | None = None) -> float:
    """max|∇_x λ·penalty| / max|∇_x logit term| at the first step where the penalty acts (t = 2).

    The balance of L's two terms, which λ sets and the attribution's scale changes (docs/methods.md §2):
    one climbing step from the clean image (the image alone; a flip would be climbed alike), then
    both gradients at x¹. ``image``
    (1, 3, H, W) normalised; ``keys`` the image's labels (default: ``cls`` only).
    """
    flip = config.flip  # the penalty's scale counts the flip the climb would run with
    config = dataclasses.replace(config, flip=False, merge_flips_in_loss=False)
    coefficients = _coefficients(cls, keys if keys is not None else [cls], model.num_classes,
                                 config.other_classes).to(image.device)[None]
    target = torch.tensor([cls], device=image.device)
    rows = torch.arange(1, device=image.device)

    def terms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = model.features(x)
        cams = model.cams_from_features(features)
        attribution = cams[rows, target]
        if config.attribution == "gradcam":  # its flip taken to have as many positive pixels
            attribution = _gradcam_scaling(model, attribution, target, 1) / (2 if flip else 1)
        logits = model.logits_from_features(features) if config.logits == "plain" else F.relu(cams).mean(dim=(2, 3))
        return attribution, (coefficients * logits).sum(), cams

    with frozen_eval(model):
        x0 = image.detach().requires_grad_(True)
        initial, objective, _ = terms(x0)
        (grad,) = torch.autograd.grad(objective, x0)
        x1 = _batched_step(image.detach(), grad, config, 1, 1).requires_grad_(True)
        attribution, objective, _ = terms(x1)
        weights = _penalty_weights(model, target, dataclasses.replace(config, flip=flip))
        penalty = config.penalty_weight * _batched_penalty(attribution, initial.detach(), None, config, 1, 1, weights)
        (logit_grad,) = torch.autograd.grad(objective, x1, retain_graph=True)
        (penalty_grad,) = torch.autograd.grad(penalty, x1)
    return float(penalty_grad.abs().max() / (logit_grad.abs().max() + GRAD_EPS))


def _coefficients(cls: int, keys: Sequence[int], num_classes: int, other_classes: str) -> torch.Tensor:
    coefficients = torch.zeros(num_classes)
    others = range(num_classes) if other_classes == "all" else keys
    for k in others:
        if k != cls:
            coefficients[k] = -1.0
    coefficients[cls] = 1.0
    return coefficients


def _empty_maps(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    h4, w4 = strided_size(height, width)
    return np.zeros((0, height, width), np.float32), np.zeros((0, h4, w4), np.float32)


def advcam_maps(model: CamClassifier, images: Sequence[torch.Tensor], keys: Sequence[Sequence[int]],
                config: AdvCamConfig | None = None,
                saliency: Sequence[torch.Tensor] | None = None,
                numerics: Numerics = FP32) -> list[tuple[np.ndarray, np.ndarray]]:
    """AdvCAM maps of several images, batched.

    ``images``: normalised (1, 3, H, W) tensors on the model's device; ``keys``: each image's label
    classes; ``saliency``: one (H, W) map in [0, 1] per image for AdvCAM-Sal; ``numerics``: the
    forward passes' precision and memory format (with ``channels_last``, the model converted by
    `Numerics.prepare`). Images of the same size share batches. Returns, per image, max-normalised
    float32 maps (K, H, W) and (K, ⌈H/4⌉, ⌈W/4⌉), one per key, as `multiscale_cams`.
    """
    config = config or AdvCamConfig()
    if saliency is not None and len(saliency) != len(images):
        raise ValueError(f"{len(saliency)} saliency maps for {len(images)} images")
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(images)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(index)
    with frozen_eval(model):
        for (height, width), members in by_size.items():
            for index in members:
                if len(keys[index]) == 0:
                    results[index] = _empty_maps(height, width)
            members = [i for i in members if len(keys[i]) > 0]
            if not members:
                continue
            batch = torch.cat([images[i] for i in members])
            climbs = [(row, image_index, cls) for row, image_index in enumerate(members)
                      for cls in keys[image_index]]
            coefficients = torch.stack([
                _coefficients(int(cls), keys[i], model.num_classes, config.other_classes)
                for _, i, cls in climbs]).to(batch.device)
            mergers = {i: ScaleMerger(height, width) for i in members}
            for scale in config.scales:
                steps, weight = config.schedule(scale)
                scaled = resize_batch(batch, scale)
                per_chunk = config.climbs_per_batch(*scaled.shape[-2:])
                climb_maps: list[torch.Tensor] = []
                for start in range(0, len(climbs), per_chunk):
                    chunk = climbs[start:start + per_chunk]
                    rows = torch.as_tensor([row for row, _, _ in chunk], device=batch.device)
                    classes = torch.as_tensor([int(cls) for _, _, cls in chunk], device=batch.device)
                    chunk_saliency = None
                    if saliency is not None:
                        chunk_saliency = torch.stack([saliency[i] for _, i, _ in chunk]).to(batch.device)
                    climb_maps.extend(climb(model, scaled[rows], classes,
                                            coefficients[start:start + per_chunk], config, steps,
                                            chunk_saliency, numerics))
                position = 0
                for image_index in members:
                    count = len(keys[image_index])
                    mergers[image_index].add(torch.stack(climb_maps[position:position + count]), weight)
                    position += count
            for image_index in members:
                results[image_index] = mergers[image_index].result()
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Reference loop: one image, one class, one flip (or the flip pair where the options couple
# them) at a time, written for clarity; the batched code above is tested against it.


def advcam_maps_reference(model: CamClassifier, image: torch.Tensor, keys: Sequence[int],
                          config: AdvCamConfig | None = None,
                          saliency: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """AdvCAM maps of one normalised image (1, 3, H, W), climbing one class at a time."""
    config = config or AdvCamConfig()
    height, width = image.shape[-2:]
    if len(keys) == 0:
        return _empty_maps(height, width)
    coupled = (config.merge_flips_in_loss or config.grad_normalization == "flip_pair"
               or config.clamp_to_input_range or config.attribution == "gradcam")
    merger = ScaleMerger(height, width)
    with _eval_mode(model):
        for scale in config.scales:
            steps, weight = config.schedule(scale)
            scaled = resize_batch(image, scale)
            class_maps = []
            for cls in keys:
                if config.flip and coupled:
                    pair = torch.cat([scaled, scaled.flip(-1)])
                    pair_map = _reference_climb(model, pair, (False, True), int(cls), keys, config, steps,
                                                saliency)
                    class_maps.append(pair_map[0] + pair_map[1].flip(-1))
                elif config.flip:
                    plain = _reference_climb(model, scaled, (False,), int(cls), keys, config, steps, saliency)
                    mirrored = _reference_climb(model, scaled.flip(-1), (True,), int(cls), keys, config,
                                                steps, saliency)
                    class_maps.append(plain[0] + mirrored[0].flip(-1))
                else:
                    class_maps.append(_reference_climb(model, scaled, (False,), int(cls), keys, config,
                                                       steps, saliency)[0])
            merger.add(torch.stack(class_maps), weight)
    return merger.result()


def _reference_climb(model: CamClassifier, x: torch.Tensor, mirrored: tuple[bool, ...], cls: int,
                     keys: Sequence[int], config: AdvCamConfig, steps: int,
                     saliency: torch.Tensor | None) -> torch.Tensor:
    """Climbs a batch of one image, or of an image and its flip climbed as one (the reference
    code's batch); ``mirrored`` says which samples are flipped (their saliency background is
    flipped too). Returns Σ_t ReLU(A^t) per sample (N, h, w)."""
    others = [k for k in (range(model.num_classes) if config.other_classes == "all" else keys) if k != cls]
    total = None
    initial = None
    for t in range(max(steps, 1)):
        x = x.detach().requires_grad_(True)
        features = model.features(x)
        cams = model.cams_from_features(features)
        attribution = cams[:, cls]
        if config.attribution == "gradcam":
            d_positive = int((model.classifier.weight[cls].flatten() > 0).sum())
            n_positive = [(a > 0).sum().item() for a in attribution]
            factors = [n / (d_positive * sum(n_positive) + GRAD_EPS) for n in n_positive]
            attribution = torch.stack([F.relu(a) * f for a, f in zip(attribution, factors, strict=True)])
        if t == 0:
            initial = attribution.detach()
        total = F.relu(attribution.detach()) if total is None else total + F.relu(attribution.detach())
        if t == max(steps, 1) - 1:
            break
        if config.logits == "plain":
            logits = model.logits_from_features(features)
        else:
            logits = F.relu(cams).mean(dim=(2, 3))
        objective = logits[:, cls].sum() - sum(logits[:, k].sum() for k in others)
        # Compare the map at t with the clean map at t = 0, on each sample or on the merged pair.
        if config.merge_flips_in_loss and len(x) == 2:
            maps = [attribution[0] + attribution[1].flip(-1)]
            initial_maps = [initial[0] + initial[1].flip(-1)]
            flipped: tuple[bool, ...] = (False,)
        else:
            maps, initial_maps, flipped = list(attribution), list(initial), mirrored
        penalty = 0.0
        weight = 1.0
        if config.penalty_scale == "reference" and config.attribution == "cam":
            positive = int((model.classifier.weight[cls].flatten() > 0).sum())
            weight = 1.0 / (config.samples_per_climb * max(positive, 1))
        for a, a0, is_flipped in zip(maps, initial_maps, flipped, strict=True):
            psi = F.relu(a) / F.relu(a).max() if F.relu(a).max() > 0 else torch.zeros_like(a)
            mask = (psi > config.mask_threshold).detach()
            if saliency is not None:
                background = _background(saliency[None], tuple(a.shape), config.saliency_threshold)[0]
                mask = mask | (background.flip(-1) if is_flipped else background)
            mask = mask & ((a - a0).abs() > SIGN_DEAD_ZONE * a0.abs().max()).detach()
            penalty = penalty + weight * (mask * (a - a0).abs()).sum()
        loss = objective - config.penalty_weight * penalty
        model.zero_grad(set_to_none=True)
        loss.backward()
        grad = x.grad
        if config.grad_normalization == "per_sample":
            grad = torch.stack([g / (g.abs().max() + GRAD_EPS) for g in grad])
        else:
            grad = grad / (grad.abs().max() + GRAD_EPS)
        x_next = x.detach() + config.step_size * grad
        if config.clamp_to_input_range:
            x_next = x_next.clamp(x.detach().min().item(), x.detach().max().item())
        x = x_next
    assert total is not None
    return total


class AdvCamSeeds:
    """The per-image compute function of `write_seed_shard` for AdvCAM / AdvCAM-Sal.

    The shard's images are cut once, in shard order, into fixed groups of consecutive images of the
    same size (from the manifest) whose climbs fit ``config.batch_budget`` samples. Asked for an
    image, it climbs the image's whole group as one batch and hands the other members out from a
    cache when they are asked for (the shard loop asks in shard order). Because the groups depend on
    the shard alone, a shard resumed after a kill batches every image as the uninterrupted run did,
    and its maps are bitwise the same: a group cut by the kill is climbed again, members already
    written included.
    """

    def __init__(self, model: CamClassifier, records: Sequence[ImageRecord], config: AdvCamConfig,
                 device: torch.device, saliency: MapReader | None = None, reference: bool = False,
                 numerics: Numerics = FP32):
        if reference and not numerics.is_default:
            raise ValueError("the reference loop runs in fp32 without channels-last; it takes no other numerics")
        self.model = model
        self.records = list(records)
        self.config = config
        self.device = device
        self.saliency = saliency
        self.reference = reference
        self.numerics = numerics
        self._cache: dict[str, dict[str, np.ndarray]] = {}
        self._groups: dict[str, list[ImageRecord]] = {}
        group: list[ImageRecord] = []
        samples = 0
        for record in self.records:
            more = config.samples_per_climb * len(record.labels)
            if group and (samples + more > config.batch_budget
                          or (record.height, record.width) != (group[0].height, group[0].width)):
                group, samples = [], 0
            group.append(record)
            samples += more
            self._groups[record.image_id] = group

    def _load(self, record: ImageRecord) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = image_to_tensor(read_image(record.image_path), self.device)
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise ValueError(f"image {record.image_id!r} ({record.image_path}) is {tuple(image.shape[-2:])}, "
                             f"its manifest says {(record.height, record.width)}")
        if self.saliency is None:
            return image, None
        saliency = np.asarray(self.saliency.read(record.image_id, ["saliency"])["saliency"], np.float32)
        if saliency.shape != tuple(image.shape[-2:]):
            raise ValueError(f"saliency map of {record.image_id!r} in {self.saliency.path} is "
                             f"{saliency.shape}, its image is {tuple(image.shape[-2:])}")
        return image, torch.from_numpy(saliency).to(self.device)

    def __call__(self, record: ImageRecord) -> Mapping[str, np.ndarray]:
        if record.image_id in self._cache:
            return self._cache.pop(record.image_id)
        if self.reference:
            image, saliency = self._load(record)
            full, stride4 = advcam_maps_reference(self.model, image, record.labels, self.config, saliency)
            return {"cam": full, "cam_stride4": stride4}
        group = self._groups.get(record.image_id, [record])
        loaded = [self._load(member) for member in group]
        results = advcam_maps(self.model, [image for image, _ in loaded], [m.labels for m in group], self.config,
                              None if self.saliency is None else [sal for _, sal in loaded], self.numerics)
        asked = next(i for i, member in enumerate(group) if member.image_id == record.image_id)
        for member, (full, stride4) in zip(group[asked + 1:], results[asked + 1:], strict=True):
            self._cache[member.image_id] = {"cam": full, "cam_stride4": stride4}
        return {"cam": results[asked][0], "cam_stride4": results[asked][1]}
