"""CAM seeds: multi-scale + flip inference as docs/methods.md §1, written as complete HDF5 shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_steps import inspect, merge_maps, seeds
from wsss_steps.data.adapters import VocLayoutDataset
from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import write_manifest
from wsss_steps.data.manifest_builder import build_manifest
from wsss_steps.methods.cams import multiscale_cams
from wsss_steps.networks.backbones import build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.io import save_classifier
from wsss_steps.report.overlays import PANEL_TITLE_HEIGHT
from wsss_steps.store.maps import MapReader

from .test_datasets import make_voc_layout


@pytest.fixture(scope="module")
def model() -> CamClassifier:
    torch.manual_seed(0)
    model = CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), num_classes=2)
    return model.eval()


def test_single_scale_equals_the_plain_computation(model: CamClassifier) -> None:
    image = torch.randn(1, 3, 40, 52)
    full, stride4 = multiscale_cams(model, image, keys=[1], scales=[1.0], flip=False)
    with torch.no_grad():
        cam = F.relu(model.cams_from_features(model.features(image)))[:, 1:2]
    expected = F.interpolate(cam, size=(40, 52), mode="bilinear", align_corners=False)[0]
    expected = expected / (expected.max() + 1e-5)
    np.testing.assert_allclose(full, expected.numpy(), atol=1e-6)
    assert stride4.shape == (1, 10, 13)
    assert full.max() == pytest.approx(1.0, abs=1e-4) and full.min() >= 0


def test_flip_merge_is_flip_equivariant(model: CamClassifier) -> None:
    image = torch.randn(1, 3, 48, 48)
    full, _ = multiscale_cams(model, image, keys=[0, 1], scales=[1.0, 0.5, 1.5])
    mirrored, _ = multiscale_cams(model, image.flip(-1), keys=[0, 1], scales=[1.0, 0.5, 1.5])
    np.testing.assert_allclose(mirrored, full[..., ::-1], atol=1e-5)


def test_no_label_gives_empty_maps(model: CamClassifier) -> None:
    full, stride4 = multiscale_cams(model, torch.randn(1, 3, 17, 21), keys=[])
    assert full.shape == (0, 17, 21) and stride4.shape == (0, 5, 6)


def test_cli_writes_every_image_with_its_label_maps(model: CamClassifier, tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog cat", "a3": "dog"})
    manifest = build_manifest(VocLayoutDataset(root, name="toy"), "train", require_masks=True)
    manifest_csv = write_manifest(manifest, tmp_path / "data")
    save_classifier(tmp_path / "model.pt", model, {"class_names": ["cat", "dog"], "variant": "cam"})
    shards = []
    for shard in range(2):
        shards.append(tmp_path / f"shard-{shard}-of-2.h5")
        seeds.main(["--method", "cam", "--classifier", str(tmp_path / "model.pt"), "--manifest", str(manifest_csv),
                    "--shard", str(shard), "--num-shards", "2", "--out", str(shards[-1]),
                        "--scales", "1.0", "0.5", "--device", "cpu"])
    merge_maps.main(["--manifest", str(manifest_csv), "--out", str(tmp_path / "maps.h5"), *map(str, shards)])
    with MapReader(tmp_path / "maps.h5") as reader:
        assert sorted(reader.ids) == ["a1", "a2", "a3"]
        maps = reader.read("a2")
        np.testing.assert_array_equal(maps["keys"], [0, 1])
        assert maps["cam"].shape == (2, 20, 24) and maps["cam_stride4"].shape == (2, 5, 6)
        image = image_to_tensor(read_image(root / "JPEGImages" / "a2.jpg"))
        expected, _ = multiscale_cams(model, image, [0, 1], [1.0, 0.5])
        np.testing.assert_allclose(maps["cam"], expected, atol=1e-3)  # float16 storage
        assert reader.attrs["method"] == "cam" and '"scales": [1.0, 0.5]' in reader.attrs["params"]
    out = tmp_path / "a2.png"
    inspect.main([str(tmp_path / "maps.h5"), "a2", "--manifest", str(manifest_csv), "--map", "cam",
                  "--out", str(out)])
    sheet = read_image(out)
    assert sheet.shape == (20 + PANEL_TITLE_HEIGHT, 24 * 4, 3)  # image, truth, 2 class maps


def test_classifier_of_other_classes_is_refused(model: CamClassifier, tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat"})
    manifest_csv = write_manifest(build_manifest(VocLayoutDataset(root), "train", True), tmp_path / "data")
    save_classifier(tmp_path / "model.pt", model, {"class_names": ["bird", "dog"], "variant": "cam"})
    with pytest.raises(SystemExit, match="trained on classes"):
        seeds.main(["--method", "cam", "--classifier", str(tmp_path / "model.pt"), "--manifest", str(manifest_csv),
                        "--out", str(tmp_path / "s.h5"), "--device", "cpu"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--method", "advcam_sal"], "--method advcam_sal needs --saliency"),
    (["--method", "advcam", "--saliency", "sal.h5"], "--saliency is for --method advcam_sal"),
    (["--method", "cam", "--steps", "3"], "--method cam takes no AdvCAM options"),
    (["--method", "gradcam"], "invalid choice: 'gradcam'"),
])
def test_seed_options_that_do_not_fit_the_method_are_refused(argv: list[str], message: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        seeds.main(["--classifier", "model.pt", "--manifest", "m.csv", "--out", "s.h5", *argv])
    assert message in capsys.readouterr().err
