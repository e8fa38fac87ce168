"""AdvCAM / AdvCAM-Sal (docs/methods.md §2): batched climbing against the one-at-a-time reference loop,
the clean-CAM limit, the restricting mask, the saliency mask, resumable shards and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from wsss_steps import seeds
from wsss_steps.data.images import write_image
from wsss_steps.data.manifest import ImageRecord, Manifest, write_manifest
from wsss_steps.methods import advcam
from wsss_steps.methods.advcam import (
    AdvCamConfig,
    AdvCamSeeds,
    advcam_maps,
    advcam_maps_reference,
    climb,
    frozen_eval,
)
from wsss_steps.methods.cams import multiscale_cams
from wsss_steps.networks.backbones import build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.io import save_classifier
from wsss_steps.store.maps import MapReader, MapWriter
from wsss_steps.store.shards import write_seed_shard

NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the climbs are tiny, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyBackbone(nn.Module):
    """Two strided conv + BatchNorm + ReLU layers (output stride 4); BN makes eval mode matter."""

    out_channels = 16

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def tiny_model(seed: int = 0) -> CamClassifier:
    torch.manual_seed(seed)
    model = CamClassifier(TinyBackbone(), NUM_CLASSES)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # running statistics unlike a batch's own
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class LinearBackbone(nn.Module):
    """Feature d at a pixel = input channel d (a 1×1 conv + identity BN): CAM_c is linear in the
    image with no spatial mixing, so the climb's effect on each pixel can be read off directly."""

    out_channels = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def linear_model() -> CamClassifier:
    model = CamClassifier(LinearBackbone(), 2)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.eye(2)[:, :, None, None])
    return model.eval()


def square_image(size: int = 16) -> torch.Tensor:
    """Channel 0: a bright square (CAM of class 0 high, ψ = 1) on a dim background (ψ = 0.25)."""
    image = torch.zeros(1, 3, size, size)
    image[0, 0] = 0.5
    image[0, 0, 4:8, 4:8] = 2.0
    return image


def images_and_keys() -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(1, 3, 32, 40, generator=generator) for _ in range(3)]
    images.append(torch.randn(1, 3, 24, 36, generator=generator))  # another size: its own batches
    return images, [(1,), (0, 3), (1, 2, 4), (2, 3)]


def half_salient(height: int, width: int) -> torch.Tensor:
    saliency = torch.ones(height, width)
    saliency[:, : width // 2] = 0.0
    return saliency


def max_diff(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return max(float(np.abs(x - y).max()) for pa, pb in zip(a, b, strict=True)
               for x, y in zip(pa, pb, strict=True))


# Few steps: in float32 longer climbs drift apart by amplified rounding (see the float64 test).
CONFIGS = {
    "paper": AdvCamConfig(steps=5, scales=(1.0, 0.5, 1.5), batch_budget=6),
    "reference_code": AdvCamConfig.preset("reference_code", steps=6, scales=(1.0, 0.5, 1.5), batch_budget=6),
    "labels_relu_gap_clamp_half": AdvCamConfig(
        steps=6, scales=(1.0, 0.5), other_classes="labels", logits="relu_gap",
        clamp_to_input_range=True, small_scale_schedule="half", batch_budget=4),
    "gradcam_no_flip": AdvCamConfig(steps=4, scales=(1.0, 1.5), flip=False, attribution="gradcam",
                                    merge_flips_in_loss=True, batch_budget=3),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("with_saliency", [False, True])
def test_batched_climb_equals_reference_loop(name: str, with_saliency: bool) -> None:
    model = tiny_model()
    images, keys = images_and_keys()
    config = CONFIGS[name]
    saliency = [half_salient(*image.shape[-2:]) for image in images] if with_saliency else None
    batched = advcam_maps(model, images, keys, config, saliency)
    reference = [advcam_maps_reference(model, image, k, config, None if saliency is None else saliency[i])
                 for i, (image, k) in enumerate(zip(images, keys, strict=True))]
    for (full, stride4), k, image in zip(batched, keys, images, strict=True):
        assert full.dtype == np.float32 and full.shape == (len(k), *image.shape[-2:])
        assert stride4.shape == (len(k), (image.shape[-2] + 3) // 4, (image.shape[-1] + 3) // 4)
    assert max_diff(batched, reference) <= 1e-4
    # The climb moved the maps away from the clean CAMs (the comparison is not vacuous).
    clean = advcam_maps(model, images, keys, AdvCamConfig(steps=0, scales=config.scales, flip=config.flip))
    assert max_diff(batched, clean) > 1e-3


def test_full_length_climb_equals_reference_loop_in_float64() -> None:
    # In float32 a 27-step climb amplifies the rounding differences between batch-1 and batch-N
    # convolutions (module docstring, "Numerics"); in float64 the two must still agree.
    model = tiny_model().double()
    images, keys = images_and_keys()
    images = [image.double() for image in images[:2]] + [images[3].double()]
    keys = [keys[0], keys[2], keys[3]]
    for config in (AdvCamConfig(scales=(1.0, 0.5), batch_budget=4),
                   AdvCamConfig.preset("reference_code", scales=(1.0, 0.5), batch_budget=4),
                   AdvCamConfig(steps=12, scales=(0.5,), other_classes="labels", logits="relu_gap",
                                clamp_to_input_range=True, small_scale_schedule="half", batch_budget=4)):
        batched = advcam_maps(model, images, keys, config)
        reference = [advcam_maps_reference(model, image, k, config)
                     for image, k in zip(images, keys, strict=True)]
        assert max_diff(batched, reference) <= 1e-6


def test_batch_budget_does_not_change_results() -> None:
    model = tiny_model()
    images, keys = images_and_keys()
    one = advcam_maps(model, images, keys, AdvCamConfig(steps=4, scales=(1.0, 0.5), batch_budget=2))
    many = advcam_maps(model, images, keys, AdvCamConfig(steps=4, scales=(1.0, 0.5), batch_budget=64))
    assert max_diff(one, many) <= 1e-4


def test_zero_steps_gives_the_cam_seeds() -> None:
    model = tiny_model()
    images, keys = images_and_keys()
    scales = (1.0, 0.5, 1.5, 2.0)
    # batch_budget 2: the same image + flip batches as multiscale_cams, so bit for bit equal.
    exact = advcam_maps(model, images, keys, AdvCamConfig(steps=0, scales=scales, batch_budget=2))
    batched = advcam_maps(model, images, keys, AdvCamConfig(steps=0, scales=scales))
    for image, k, (full, stride4), (full_b, stride4_b) in zip(images, keys, exact, batched, strict=True):
        cam_full, cam_stride4 = multiscale_cams(model, image, k, scales)
        np.testing.assert_array_equal(full, cam_full)
        np.testing.assert_array_equal(stride4, cam_stride4)
        np.testing.assert_allclose(full_b, cam_full, rtol=0, atol=1e-6)
        np.testing.assert_allclose(stride4_b, cam_stride4, rtol=0, atol=1e-6)


def test_climbing_leaves_the_model_as_it_was() -> None:
    model = tiny_model().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, keys = images_and_keys()
    seen: list[bool] = []
    hook = model.classifier.register_forward_hook(
        lambda module, inputs, output: seen.append(module.weight.requires_grad or module.training))
    in_train_mode = advcam_maps(model, images[:2], keys[:2], AdvCamConfig(steps=3, scales=(1.0,)))
    hook.remove()
    assert seen and not any(seen)  # eval mode, frozen parameters during the climb
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    # BatchNorm statistics untouched (torch.equal: assert_close imports torch.distributed, ~2 s)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    in_eval_mode = advcam_maps(model.eval(), images[:2], keys[:2], AdvCamConfig(steps=3, scales=(1.0,)))
    assert max_diff(in_train_mode, in_eval_mode) == 0.0
    # The reference loop backpropagates into the parameters as plain code does, then restores them.
    model.train()
    reference = advcam_maps_reference(model, images[0], keys[0], AdvCamConfig(steps=3, scales=(1.0,)))
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert max_diff([reference], in_eval_mode[:1]) <= 1e-4
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def _growth(config: AdvCamConfig, steps: int) -> torch.Tensor:
    """Σ_t (A^t − A⁰) of class 0 on the square image: how much the climb added at each pixel."""
    model, image = linear_model(), square_image()
    coefficients = torch.tensor([[1.0, -1.0]])
    with frozen_eval(model):
        total = climb(model, image, torch.tensor([0]), coefficients, config, steps)[0]
    return total - steps * image[0, 0]


def test_restricting_mask_stops_growth_where_the_map_is_already_high() -> None:
    base = dict(scales=(1.0,), flip=False)
    square = square_image()[0, 0] > 1.0
    free = _growth(AdvCamConfig(penalty_weight=0.0, **base), steps=8)
    masked = _growth(AdvCamConfig(**base), steps=8)
    no_mask = _growth(AdvCamConfig(mask_threshold=1.0, **base), steps=8)  # ψ ≤ 1: M is empty
    # Without the penalty every pixel rises by ξ a step: Σ_{t<8} t ξ = 28 ξ (BatchNorm's eps
    # makes the features x / √(1 + 1e-5), hence the tolerance).
    assert (free - 28 * 0.08).abs().max() <= 1e-3
    assert (no_mask - free).abs().max() <= 1e-6
    # With it, the high region (M) is held at its clean value: it only swings between A⁰ and one
    # step above (growth ≤ ξ every other map) ...
    assert masked[square].max() <= 0.08 * 8 / 2 + 1e-4
    assert masked[square].mean() < 0.2 * free[square].mean()
    # ... while the rest grows more. With λ = 7 on the raw CAM the penalty dominates ∇/max|∇|,
    # so the rest grows slowly; with a weaker penalty it keeps most of its free growth.
    assert masked[~square].min() > 1.5 * masked[square].max()
    weak = _growth(AdvCamConfig(penalty_weight=0.01, **base), steps=8)
    assert weak[square].max() <= 0.08 * 8 / 2 + 1e-4
    assert weak[~square].min() > 0.5 * free[~square].min()


def test_saliency_background_joins_the_mask() -> None:
    model, image = linear_model(), square_image()
    saliency = torch.ones(16, 16)
    saliency[:, 10:] = 0.0  # the right part is background; the square is inside the salient part
    outside = (saliency < 0.1).numpy()
    config = AdvCamConfig(steps=8, scales=(1.0,))
    (cam, _), = advcam_maps(model, [image], [(0,)], AdvCamConfig(steps=0, scales=(1.0,)))
    (adv, _), = advcam_maps(model, [image], [(0,)], config)
    (sal, _), = advcam_maps(model, [image], [(0,)], config, [saliency])

    def outside_share(maps: np.ndarray) -> float:
        return float(maps[0][outside].sum() / maps[0].sum())

    assert outside_share(adv) > outside_share(cam) + 0.005  # AdvCAM spreads into the background
    assert outside_share(sal) <= outside_share(cam)  # AdvCAM-Sal does not
    assert outside_share(sal) < outside_share(adv) - 0.02
    dim = square_image()[0, 0].numpy() < 1.0
    np.testing.assert_allclose(sal[0][outside], cam[0][outside], atol=0.02)  # held at A⁰ (÷ max)
    # Inside the salient region, away from the square, AdvCAM-Sal grows as AdvCAM does.
    np.testing.assert_allclose(sal[0][~outside & dim], adv[0][~outside & dim], atol=1e-5)
    assert sal[0][~outside & dim].min() > cam[0][~outside & dim].max() + 0.02


def test_config_presets_and_schedule() -> None:
    paper = AdvCamConfig()
    assert (paper.steps, paper.step_size, paper.penalty_weight, paper.mask_threshold) == (27, 0.08, 7.0, 0.5)
    assert paper.scales == (1.0, 0.5, 1.5, 2.0) and paper.flip and paper.other_classes == "all"
    assert AdvCamConfig.preset("paper") == paper
    reference = AdvCamConfig.preset("reference_code", steps=27)
    assert reference.schedule(0.5) == (13, 1.0) and reference.schedule(1.0) == (27, 1.0)
    half = AdvCamConfig(small_scale_schedule="half")
    assert half.schedule(0.5) == (13, 2.0) and half.schedule(2.0) == (27, 1.0)
    assert AdvCamConfig(steps=8, small_scale_schedule="half").schedule(0.5) == (5, 1.0)
    assert AdvCamConfig(steps=4, small_scale_schedule="half").schedule(0.5) == (4, 1.0)
    assert "batch_budget" not in paper.params() and "saliency_threshold" not in paper.params()
    assert paper.params(saliency=True)["saliency_threshold"] == 0.10
    with pytest.raises(ValueError, match="other_classes"):
        AdvCamConfig(other_classes="some")


def _write_dataset(tmp_path, count: int = 4) -> Manifest:
    rng = np.random.default_rng(0)
    records = []
    labels = [(0,), (1, 3), (2,), (0, 4)]
    for index in range(count):
        image_id = f"img{index}"
        path = tmp_path / "images" / f"{image_id}.png"
        write_image(path, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        records.append(ImageRecord(image_id, path, None, labels[index % len(labels)], 24, 32))
    return Manifest("toy", "train", tuple(f"class{i}" for i in range(NUM_CLASSES)), records)


def test_partial_shard_resumes(tmp_path, monkeypatch) -> None:
    manifest = _write_dataset(tmp_path)
    model = tiny_model()
    # Budget 8 = 4 climbs with their flips: groups img0-img2 (1 + 2 + 1 classes) and img3, so the
    # kill after img1 cuts a group.
    config = AdvCamConfig(steps=3, scales=(1.0, 0.5), batch_budget=8)

    class Killed(RuntimeError):
        pass

    def killed_after(count: int, compute):
        calls = []

        def compute_or_die(record):
            if len(calls) == count:
                raise Killed(record.image_id)
            calls.append(record.image_id)
            return compute(record)
        return compute_or_die

    out = tmp_path / "shard-0-of-1.h5"
    seeds = AdvCamSeeds(model, manifest.records, config, torch.device("cpu"))
    with pytest.raises(Killed):
        write_seed_shard(manifest, 0, 1, out, killed_after(2, seeds), "advcam", config.params())
    assert not out.exists() and out.with_name(out.name + ".partial").exists()
    batches = []
    climb = advcam.advcam_maps

    def recording(model, images, *args, **kwargs):
        batches.append(len(images))
        return climb(model, images, *args, **kwargs)

    monkeypatch.setattr(advcam, "advcam_maps", recording)
    resumed = write_seed_shard(manifest, 0, 1, out, AdvCamSeeds(model, manifest.records, config, torch.device("cpu")),
                               "advcam", config.params())
    monkeypatch.undo()
    assert resumed == 2
    assert batches == [3, 1]  # img2 is climbed with img0 and img1 again, as in an uninterrupted run
    straight = tmp_path / "straight.h5"
    assert write_seed_shard(manifest, 0, 1, straight, AdvCamSeeds(model, manifest.records, config,
                                                                  torch.device("cpu")), "advcam", config.params()) == 4
    with MapReader(out) as got, MapReader(straight) as expected:  # the same batches: bitwise equal
        for image_id in manifest.ids:
            a, b = got.read(image_id), expected.read(image_id)
            for name in ("cam", "cam_stride4"):
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{image_id}/{name}")
    one_by_one = tmp_path / "clean.h5"
    reference_seeds = AdvCamSeeds(model, manifest.records, config, torch.device("cpu"), reference=True)
    assert write_seed_shard(manifest, 0, 1, one_by_one, reference_seeds, "advcam", config.params()) == 4
    with MapReader(out) as got, MapReader(one_by_one) as expected:
        assert got.attrs["method"] == "advcam" and sorted(got.ids) == manifest.ids
        for image_id in manifest.ids:
            a, b = got.read(image_id), expected.read(image_id)
            np.testing.assert_array_equal(a["keys"], manifest.record(image_id).labels)
            assert a["cam"].dtype == np.float16 and a["cam"].shape == (len(a["keys"]), 24, 32)
            assert a["cam_stride4"].shape == (len(a["keys"]), 6, 8)
            np.testing.assert_allclose(a["cam"].astype(np.float32), b["cam"].astype(np.float32), atol=1e-3)


def test_command_line_advcam_and_advcam_sal(tmp_path) -> None:
    manifest = _write_dataset(tmp_path, count=3)
    manifest_csv = write_manifest(manifest, tmp_path / "manifest")
    torch.manual_seed(0)
    model = CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), NUM_CLASSES)
    save_classifier(tmp_path / "model.pt", model, {"class_names": list(manifest.class_names)})
    saliency_path = tmp_path / "saliency.h5"
    with MapWriter(saliency_path, stage="saliency", method="c2amh", params={}, dataset="toy") as writer:
        for record in manifest.records:
            writer.write(record.image_id, {"saliency": half_salient(24, 32).numpy()}, {})
        writer.finish(manifest.ids)
    common = ["--classifier", str(tmp_path / "model.pt"), "--manifest", str(manifest_csv), "--threads", "1",
              "--steps", "3", "--scales", "1.0,0.5"]
    assert seeds.main([*common, "--method", "advcam", "--out", str(tmp_path / "adv.h5")]) == 0
    assert seeds.main([*common, "--method", "advcam_sal", "--out", str(tmp_path / "sal.h5"), "--saliency", str(saliency_path),
                        "--saliency-threshold", "0.2", "--preset", "reference_code", "--shard", "0",
                        "--num-shards", "1"]) == 0
    with MapReader(tmp_path / "adv.h5") as adv, MapReader(tmp_path / "sal.h5") as sal:
        assert adv.attrs["method"] == "advcam" and sal.attrs["method"] == "advcam_sal"
        assert adv.params["steps"] == 3 and adv.params["scales"] == [1.0, 0.5]
        assert sal.params["saliency_threshold"] == 0.2 and sal.params["attribution"] == "gradcam"
        for image_id in manifest.ids:
            maps = adv.read(image_id)
            assert maps["cam"].shape == (len(maps["keys"]), 24, 32)
            assert 0.0 <= maps["cam"].min() and maps["cam"].max() <= 1.0
    help_text = seeds.build_parser().format_help()
    assert "--saliency" in help_text and "--reference" in help_text
    assert json.loads(json.dumps(AdvCamConfig().params()))["steps"] == 27


def _imagenet_lite0() -> CamClassifier:
    """A trained network: ImageNet EfficientNet-Lite0 as a CAM classifier of its 1000 classes (the
    fc bias is a constant per class and changes no gradient)."""
    from wsss_steps.networks.backbones import efficientnet_lite0_classifier

    full = efficientnet_lite0_classifier()
    model = CamClassifier(build_backbone("efficientnet_lite0", None, 16, pretrained=True), 1000)
    model.classifier.weight.data.copy_(full._fc.weight.data[:, :, None, None])
    return model.eval()


def test_default_keeps_the_reference_codes_balance_of_logits_and_penalty() -> None:
    """λ = 7 was tuned on the reference code's attribution scale (docs/methods.md §2): at the first
    penalised step the default's penalty-to-logit gradient ratio must be the reference code's
    (with the paper's logits), not the raw CAM's ~1000× heavier penalty."""
    from wsss_steps.data.generated import GeneratorSettings, render_image
    from wsss_steps.methods.advcam import penalty_logit_ratio
    from wsss_steps.networks.inputs import image_to_tensor

    model = _imagenet_lite0()
    for index in range(2):
        image = image_to_tensor(render_image(GeneratorSettings(image_size=128), "train", index).image)
        with torch.no_grad():
            cls = int(model(image).argmax())
        default = penalty_logit_ratio(model, image, cls, AdvCamConfig())
        reference = penalty_logit_ratio(model, image, cls, AdvCamConfig.preset("reference_code"))
        reference_plain = penalty_logit_ratio(model, image, cls,
                                              AdvCamConfig.preset("reference_code", logits="plain"))
        raw_cam = penalty_logit_ratio(model, image, cls, AdvCamConfig(penalty_scale="none"))
        assert 0.67 < default / reference_plain < 1.5
        assert default < 20 * reference  # the logits' form (plain vs GAP(ReLU)) moves it < 10×
        assert raw_cam > 300 * reference and raw_cam > 100 * default
