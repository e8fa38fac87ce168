"""Opt-in precision (bf16 / fp16 autocast) and channels-last at inference (issue 31): the seeds (CAM,
AdvCAM's climb), segmentation, saliency and weight maps. At the defaults nothing changes (maps and
their identity); otherwise the maps stay float32, close to fp32's, and their file records it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_relation import make_shapes_dataset, one_thread  # noqa: F401 (autouse fixture)
from wsss_steps import saliency_maps, seeds, segment, weight_maps
from wsss_steps.data.manifest import read_manifest
from wsss_steps.methods.advcam import AdvCamConfig, AdvCamSeeds, advcam_maps
from wsss_steps.methods.cams import multiscale_cams
from wsss_steps.methods.segmentation import predict_probs
from wsss_steps.networks.backbones import build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.io import save_classifier
from wsss_steps.networks.numerics import FP32, Numerics
from wsss_steps.networks.saliency import build_saliency_net, save_saliency
from wsss_steps.networks.segmentation import build_segmentation_net, save_segmentation
from wsss_steps.networks.weight_map import build_weight_map_generator, save_weight_map_generator
from wsss_steps.saliency_maps import multiscale_saliency
from wsss_steps.store.maps import MapReader

# Observed on a random small_resnet (max-normalised maps in [0, 1]): bf16 CAMs within ~0.013 of
# fp32's, a 6-step climb within ~0.04; fp16 ~0.002 and ~0.02.
TOLERANCE = {"bf16": 0.08, "fp16": 0.05}


def small_classifier(num_classes: int = 5) -> CamClassifier:
    torch.manual_seed(0)
    return CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), num_classes).eval()


def images_and_keys() -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, 40, 48, generator=generator) for _ in range(3)], [(1,), (0, 3), (2, 4)]


def max_diff(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return max(float(np.abs(x - y).max()) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True))


def test_numerics_identity_is_empty_at_the_defaults() -> None:
    assert FP32.params() == {} and FP32.is_default and FP32.dtype == torch.float32
    assert Numerics("bf16").params() == {"precision": "bf16"}
    assert Numerics("fp32", True).params() == {"channels_last": True}
    assert Numerics("fp16", True).dtype == torch.float16
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        Numerics("fp8")
    x = torch.randn(2, 3, 4, 5)
    assert FP32.layout(x) is x
    assert Numerics(channels_last=True).layout(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_is_supported_on_the_cpu(precision: str) -> None:
    """CPU autocast runs both (torch ≥ 2.6); a dtype torch would disable itself for is refused."""
    layer = torch.nn.Conv2d(3, 4, 3)
    with Numerics(precision).autocast("cpu"):
        assert layer(torch.randn(1, 3, 8, 8)).dtype == Numerics(precision).dtype


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_climb_is_finite_float32_and_close_to_fp32(precision: str) -> None:
    model = small_classifier()
    images, keys = images_and_keys()
    config = AdvCamConfig(steps=6, scales=(1.0, 0.5))
    reference = advcam_maps(model, images, keys, config)
    maps = advcam_maps(model, images, keys, config, numerics=Numerics(precision))
    for full, stride4 in maps:
        assert full.dtype == stride4.dtype == np.float32
        assert np.isfinite(full).all() and np.isfinite(stride4).all()
        assert full.max() <= 1.0 and full.min() >= 0.0
    difference = max_diff(reference, maps)
    assert 0.0 < difference <= TOLERANCE[precision]  # other rounding, the same maps
    cams = [multiscale_cams(model, image, k) for image, k in zip(images, keys, strict=True)]
    low = [multiscale_cams(model, image, k, numerics=Numerics(precision))
           for image, k in zip(images, keys, strict=True)]
    assert 0.0 < max_diff(cams, low) <= TOLERANCE[precision] / 2


def test_default_numerics_keep_the_climb_bit_for_bit() -> None:
    """fp32 by default, and on the CPU a channels-last network climbs as the channels-last input
    alone did before (oneDNN picks the same kernels): the same maps, bit for bit."""
    model = small_classifier()
    images, keys = images_and_keys()
    config = AdvCamConfig(steps=3, scales=(1.0, 0.5))
    plain = advcam_maps(model, images, keys, config)
    assert max_diff(plain, advcam_maps(model, images, keys, config, numerics=FP32)) == 0.0
    channels_last = Numerics(channels_last=True)
    converted = small_classifier()
    channels_last.prepare(converted)
    assert converted.classifier.weight.is_contiguous(memory_format=torch.channels_last)
    assert max_diff(plain, advcam_maps(converted, images, keys, config, numerics=channels_last)) <= 1e-5


def test_reference_loop_takes_no_other_numerics() -> None:
    with pytest.raises(ValueError, match="reference loop runs in fp32"):
        AdvCamSeeds(small_classifier(), [], AdvCamConfig(), torch.device("cpu"), reference=True,
                    numerics=Numerics("bf16"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    manifest_csv, _ = make_shapes_dataset(root / "ds", count=3)
    save_classifier(root / "classifier.pt", small_classifier(2), {"class_names": ["square", "disc"]})
    return {"root": root, "manifest": manifest_csv, "classifier": root / "classifier.pt"}


def _maps(path: Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    with MapReader(path) as reader:
        return reader.params, {i: {k: np.asarray(v) for k, v in reader.read(i).items()} for i in reader.ids}


@pytest.mark.parametrize("method", ["cam", "advcam"])
def test_seeds_record_the_precision_only_off_the_defaults(shapes: dict[str, Path], tmp_path: Path,
                                                          method: str) -> None:
    common = ["--classifier", str(shapes["classifier"]), "--manifest", str(shapes["manifest"]), "--threads", "1",
              "--device", "cpu", "--method", method, "--scales", "1.0", "0.5"]
    if method == "advcam":
        common += ["--steps", "3"]
    assert seeds.main([*common, "--out", str(tmp_path / "fp32.h5")]) == 0
    assert seeds.main([*common, "--out", str(tmp_path / "bf16.h5"), "--precision", "bf16"]) == 0
    assert seeds.main([*common, "--out", str(tmp_path / "nhwc.h5"), "--channels-last"]) == 0
    params32, maps32 = _maps(tmp_path / "fp32.h5")
    params16, maps16 = _maps(tmp_path / "bf16.h5")
    params_cl, maps_cl = _maps(tmp_path / "nhwc.h5")
    assert "precision" not in params32 and "channels_last" not in params32
    assert params16 == {**params32, "precision": "bf16"}
    assert params_cl == {**params32, "channels_last": True}
    for image_id, maps in maps32.items():
        for name in ("cam", "cam_stride4"):
            assert np.isfinite(maps16[image_id][name].astype(np.float32)).all()
            np.testing.assert_allclose(maps16[image_id][name].astype(np.float32), maps[name].astype(np.float32),
                                       atol=TOLERANCE["bf16"])
            np.testing.assert_allclose(maps_cl[image_id][name].astype(np.float32), maps[name].astype(np.float32),
                                       atol=1e-3)


def test_seeds_refuse_the_reference_loop_with_other_numerics(shapes: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        seeds.main(["--classifier", str(shapes["classifier"]), "--manifest", str(shapes["manifest"]),
                    "--method", "advcam", "--reference", "--precision", "bf16", "--out", str(tmp_path / "x.h5")])


def test_segmentation_saliency_and_weight_maps_follow_the_precision(shapes: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    segmentation = build_segmentation_net("deeplabv3plus", "small_resnet", 3, 8, (2,), width=16).eval()
    image = torch.randn(1, 3, 32, 32)
    probs = predict_probs(segmentation, image, (0.75, 1.0))
    low = predict_probs(segmentation, image, (0.75, 1.0), numerics=Numerics("bf16"))
    assert low.dtype == np.float32 and np.isfinite(low).all()
    np.testing.assert_allclose(low, probs, atol=0.05)
    save_segmentation(tmp_path / "seg.pt", segmentation, {"class_names": ["square", "disc"], "name": "seg"})
    saliency = build_saliency_net("c2am", "small_resnet", 8, pretrained=False).eval()
    assert np.abs(multiscale_saliency(saliency, image, (1.0,), numerics=Numerics("bf16"))
                  - multiscale_saliency(saliency, image, (1.0,))).max() <= 0.05
    save_saliency(tmp_path / "sal.pt", saliency, {"method": "c2am"})
    generator = build_weight_map_generator(pretrained=False).eval()
    save_weight_map_generator(tmp_path / "wm.pt", generator, {})
    common = ["--manifest", str(shapes["manifest"]), "--threads", "1", "--device", "cpu"]
    runs = {"segment": (segment.main, ["--model", str(tmp_path / "seg.pt"), "--scales", "1.0", "--no-crf"]),
            "saliency": (saliency_maps.main, ["--model", str(tmp_path / "sal.pt"), "--scales", "1.0", "--no-crf"]),
            "weight_map": (weight_maps.main, ["--model", str(tmp_path / "wm.pt")])}
    ids = read_manifest(shapes["manifest"]).ids
    for name, (main, options) in runs.items():
        assert main([*common, *options, "--out", str(tmp_path / f"{name}32.h5")]) == 0
        assert main([*common, *options, "--out", str(tmp_path / f"{name}16.h5"), "--precision", "bf16",
                     "--channels-last"]) == 0
        params32, maps32 = _maps(tmp_path / f"{name}32.h5")
        params16, maps16 = _maps(tmp_path / f"{name}16.h5")
        assert "precision" not in params32 and "channels_last" not in params32, name
        assert params16 == {**params32, "precision": "bf16", "channels_last": True}, name
        assert sorted(maps16) == sorted(ids)
        if name != "segment":  # float maps: close (segment's are argmax labels)
            key = "saliency" if name == "saliency" else "weight_map"
            for image_id in ids:
                a, b = maps16[image_id][key].astype(np.float32), maps32[image_id][key].astype(np.float32)
                assert np.isfinite(a).all() and np.abs(a - b).max() <= 0.05, name
