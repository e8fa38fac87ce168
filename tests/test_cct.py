"""Cross-consistency training (docs/methods.md §10): the perturbations on constructed feature maps,
the consistency loss and ramp-up, the paired dataset, and the training step with its resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_relation import one_thread  # noqa: F401 (autouse fixture)
from tests.test_segmentation import _train_args, _weights, shapes  # noqa: F401 (fixture)
from wsss_steps import train_segmentation
from wsss_steps.data.images import IGNORE_LABEL, read_label_mask
from wsss_steps.data.manifest import read_manifest
from wsss_steps.networks.cct import (
    PAPER_DECODERS,
    CCTNet,
    context_masking,
    cutout_mask,
    feature_dropout,
    feature_noise,
    object_masking,
    spatial_dropout,
    vat_perturbation,
)
from wsss_steps.networks.segmentation import build_segmentation_net, load_segmentation
from wsss_steps.training.augment import TrainAugmentation
from wsss_steps.training.cct import (
    CCTDataset,
    SubsetGroundTruth,
    consistency_weights,
    sigmoid_rampup,
    softmax_mse,
    weak_cross_entropy,
)
from wsss_steps.training.segmentation import MaskSource
from wsss_steps.workflow.config import check_references, segmentation_name, semi_supervised_method
from wsss_steps.workflow.options import semi_supervised_options


def test_object_and_context_masking_zero_exactly_the_predicted_regions() -> None:
    z = torch.rand(2, 4, 8, 8) + 0.5  # no zero of its own
    foreground = torch.zeros(2, 16, 16, dtype=torch.bool)  # at twice the features' resolution
    foreground[0, 4:10, 2:8] = True  # features rows 2..4, columns 1..3
    region = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    region[0, 0, 2:5, 1:4] = True
    objects_out = object_masking(z, foreground)
    context_out = context_masking(z, foreground)
    assert torch.equal(objects_out == 0, region.expand_as(z))
    assert torch.equal(context_out == 0, ~region.expand_as(z))
    assert torch.equal(objects_out + context_out, z)


def test_feature_dropout_drops_exactly_the_positions_above_gamma_of_the_peak() -> None:
    attention = torch.tensor([[0.1, 0.5], [0.8, 1.0]])  # the channel mean, peak 1.0
    z = attention.expand(1, 3, 2, 2).clone()
    z[:, 0] += 0.3
    z[:, 1] -= 0.3  # the mean is unchanged
    out = feature_dropout(z, gamma=0.7)
    dropped = torch.tensor([[False, False], [True, True]])
    assert torch.equal((out == 0).all(dim=1)[0], dropped)
    assert torch.equal(out[0][:, ~dropped], z[0][:, ~dropped])
    # Per image: the same map at half the scale drops the same places.
    halves = feature_dropout(torch.cat([z, z / 2]), gamma=0.7)
    assert torch.equal((halves == 0).all(dim=1), dropped.expand(2, 2, 2))
    # γ drawn from U(0.7, 0.9): 0.75 of the peak is dropped at γ < 0.75 only, 0.95 always.
    z = torch.tensor([0.5, 0.75, 0.95, 1.0]).view(1, 1, 2, 2)
    torch.manual_seed(0)
    outs = torch.stack([feature_dropout(z) for _ in range(200)])
    assert (outs[:, 0, 0, 1, 0] == 0).all() and (outs[:, 0, 0, 1, 1] == 0).all() and (outs[:, 0, 0, 0, 0] != 0).all()
    assert 0 < (outs[:, 0, 0, 0, 1] == 0).float().mean() < 1


def test_feature_noise_is_bounded_by_uniform_range_times_z_and_shared_by_the_batch() -> None:
    torch.manual_seed(0)
    z = torch.randn(3, 5, 6, 7)
    out = feature_noise(z)
    relative = (out - z) / z
    assert (relative.abs() <= 0.3 + 1e-6).all() and relative.abs().max() > 0.25
    assert torch.allclose(relative[0], relative[1], atol=1e-5) and torch.allclose(relative[0], relative[2], atol=1e-5)
    noise = torch.full((5, 6, 7), 0.2)
    assert torch.allclose(feature_noise(z, noise=noise), z * 1.2)


def test_spatial_dropout_drops_whole_channels_at_half_and_rescales() -> None:
    torch.manual_seed(0)
    z = torch.ones(4, 64, 3, 3)
    out = spatial_dropout(z)
    per_channel = out.flatten(2)
    assert ((per_channel == 0).all(dim=2) | (per_channel == 2).all(dim=2)).all()
    assert 0.35 < (per_channel[..., 0] == 0).float().mean() < 0.65


def test_guided_cutout_erases_a_box_of_0_4_of_each_large_object_and_spares_small_ones() -> None:
    image = np.zeros((100, 120), np.uint8)
    cv2.circle(image, (40, 50), 30, 1, -1)  # a disc: its contour has far more than 50 points
    image[5:15, 100:110] = 1  # a square: 4 contour points (CHAIN_APPROX_SIMPLE): never cut
    foreground = torch.from_numpy(image).bool().unsqueeze(0)
    torch.manual_seed(0)
    for _ in range(5):
        keep = cutout_mask(foreground)[0].numpy()
        erased = np.argwhere(keep == 0)
        (y0, x0), (y1, x1) = erased.min(axis=0), erased.max(axis=0)
        assert (y1 - y0 + 1, x1 - x0 + 1) == (int(60 * 0.4), int(60 * 0.4))  # box 60×60 (x 10..70, y 20..80)
        assert erased.shape[0] == 24 * 24  # one solid box
        assert 10 <= x0 and x1 <= 70 and 20 <= y0 and y1 <= 80
        assert (keep[5:15, 100:110] == 1).all()


def test_vat_perturbation_has_norm_eps_and_leaves_the_decoder_gradients() -> None:
    torch.manual_seed(0)
    decoder = torch.nn.Conv2d(4, 3, 1)
    z = torch.randn(2, 4, 5, 5, requires_grad=True)
    r = vat_perturbation(z, decoder, xi=1e-6, eps=2.0)
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((2,), 2.0), atol=1e-4)
    assert not r.requires_grad and decoder.weight.grad is None and z.grad is None
    # It points up the KL: more distance than a random direction of the same norm.
    def kl(delta: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(decoder(z + delta), 1), F.softmax(decoder(z), 1),
                                  reduction="batchmean"))
    random_direction = torch.randn_like(r)
    random_direction *= 2.0 / random_direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert kl(r) > kl(random_direction)


def test_consistency_loss_is_the_mean_squared_softmax_difference() -> None:
    logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # softmax (0.25, 0.75)
    target = torch.tensor([[[[0.5]], [[0.5]]]])
    assert softmax_mse(logits, target).item() == pytest.approx(((0.25 - 0.5) ** 2 + (0.75 - 0.5) ** 2) / 2)
    labels = torch.tensor([[[1]]])
    assert weak_cross_entropy(logits, labels).item() == pytest.approx(-math.log(0.75))
    ignored = weak_cross_entropy(logits.requires_grad_(), torch.full((1, 1, 1), IGNORE_LABEL))
    assert ignored.item() == 0.0 and ignored.requires_grad


def test_rampup_follows_cct_sigmoid_schedule() -> None:
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    # CCT's weights: 30 and 0.4 after the first 10 % of the steps, ramped together before.
    assert consistency_weights(100, 1000) == (30.0, 0.4)
    w_u, w_w = consistency_weights(50, 1000)
    assert w_u == pytest.approx(30 * math.exp(-1.25)) and w_w == pytest.approx(0.4 * math.exp(-1.25))


@pytest.mark.parametrize("head", ["deeplabv2", "deeplabv3plus"])
def test_cct_network_has_the_paper_decoders_and_its_main_path_is_the_segmentation_net(head: str) -> None:
    torch.manual_seed(0)
    net = build_segmentation_net(head, "small_resnet", 3, 8, (2, 4), width=16).eval()
    cct = CCTNet(net, train_segmentation.cct_decoders([]))
    assert len(cct.aux_decoders) == 30
    assert [d.perturbation for d in cct.aux_decoders].count("cutout") == PAPER_DECODERS["cutout"] == 6
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(cct(images), net(images))
        z = cct.encode(images)
        foreground = cct(images).argmax(1) > 0
        for decoder in cct.aux_decoders[:3]:
            assert decoder(z, foreground).shape == (2, 3, *z.shape[-2:])
    backbone, others = cct.parameter_groups()
    assert len(backbone) + len(others) == len(list(cct.parameters()))
    with pytest.raises(ValueError, match="PERTURBATION=COUNT"):
        train_segmentation.cct_decoders(["blur=2"])


def test_pairs_visit_every_unlabelled_image_and_cycle_the_labelled(shapes: dict[str, Path]) -> None:  # noqa: F811
    manifest = read_manifest(shapes["manifest"])
    subset = [manifest.ids[0], manifest.ids[3]]
    augmentation = TrainAugmentation((24, 40), 32, flip=True)
    weak = CCTDataset(manifest, MaskSource(manifest, shapes["masks"], ground_truth_ids=subset), subset,
                      augmentation, seed=1)
    none = CCTDataset(manifest, SubsetGroundTruth(manifest, subset), subset, augmentation, seed=1)
    assert len(weak) == len(none) == 4
    labelled = [manifest.records[weak.labelled_index(i)].image_id for i in range(4)]
    assert sorted(labelled) == sorted(subset * 2)
    for index in range(4):
        image_l, label_l, image_u, label_u = weak[index]
        assert image_l.shape == image_u.shape == (3, 32, 32) and label_l.shape == label_u.shape == (32, 32)
        assert (label_l != IGNORE_LABEL).any() and (label_u != IGNORE_LABEL).any()  # ground truth, pseudo mask
        same = none[index]
        assert torch.equal(same[0], image_l) and torch.equal(same[1], label_l) and torch.equal(same[2], image_u)
        assert (same[3] == IGNORE_LABEL).all()  # no weak label
    ground_truth = read_label_mask(manifest.records[0].mask_path)
    np.testing.assert_array_equal(SubsetGroundTruth(manifest, subset).read(0, ground_truth.shape), ground_truth)


def test_cct_training_resumes_bitwise_and_records_its_settings(shapes: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    manifest = read_manifest(shapes["manifest"])
    (tmp_path / "gt.txt").write_text(f"{manifest.ids[0]}\n{manifest.ids[3]}\n")
    cct = ("--ground-truth-subset", str(tmp_path / "gt.txt"), "--semi-method", "cct", "--batch-size", "2", "--epochs", "2",
           "--cct-rampup", "0.5", "--cct-decoders", "vat=1", "drop=1", "cutout=1", "context_masking=1",
           "object_masking=1", "feature_drop=1", "feature_noise=1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = _train_args(shapes, straight, "--masks", str(shapes["masks"]), *cct)
    assert train_segmentation.main(args) == 0
    args = _train_args(shapes, resumed, "--masks", str(shapes["masks"]), *cct)
    assert train_segmentation.main([*args, "--stop-after-epochs", "1"]) == 0
    assert not (resumed / "seg.pt").exists()
    assert train_segmentation.main(args) == 0
    a, b = _weights(straight / "seg.pt"), _weights(resumed / "seg.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with (straight / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(float(r["loss_unsup"]) > 0 and float(r["loss_weak"]) > 0 for r in rows)
    # The saved file is a plain segmentation network; its identity holds CCT's settings.
    model, meta = load_segmentation(straight / "seg.pt")
    cct_settings = meta["training"]["cct"]
    assert cct_settings["decoders"] == dict.fromkeys(PAPER_DECODERS, 1) and cct_settings["weak_labels"]
    assert (cct_settings["unsupervised_weight"], cct_settings["weak_weight"]) == (30.0, 0.4)
    assert cct_settings["perturbations"]["vat_eps"] == 2.0 and meta["ground_truth_ids"] == manifest.ids[0:4:3]
    # Other decoder counts are other settings: the checkpoint is not continued, other weights.
    other = tmp_path / "other"
    other_args = _train_args(shapes, other, "--masks", str(shapes["masks"]), *cct, "feature_noise=2")
    (other / "ckpt").mkdir(parents=True)
    (other / "ckpt" / "last.pt").write_bytes((resumed / "ckpt" / "last.pt").read_bytes())
    assert train_segmentation.main([*other_args, "--stop-after-epochs", "1"]) == 0
    with (other / "metrics.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 1  # started afresh, not from epoch 3
    # Without weak labels: no pseudo masks read, no weak loss, other weights.
    noweak = tmp_path / "noweak"
    assert train_segmentation.main(_train_args(shapes, noweak, *cct)) == 0
    _, noweak_meta = load_segmentation(noweak / "seg.pt")
    assert noweak_meta["training"]["masks"] is None and not noweak_meta["training"]["cct"]["weak_labels"]
    with (noweak / "metrics.csv").open() as handle:
        assert all(float(r["loss_weak"]) == 0 for r in csv.DictReader(handle))
    assert not torch.equal(_weights(noweak / "seg.pt")["head.classifier.weight"], a["head.classifier.weight"])
    with pytest.raises(SystemExit, match="cct needs --ground-truth-subset"):
        train_segmentation.main(_train_args(shapes, tmp_path / "x", "--semi-method", "cct"))


def test_workflow_names_and_options_of_cct_experiments() -> None:
    base = {"classifier": "cam", "seeds": "cam"}
    mix = {**base, "segmentation": {"ground_truth_subset": "configs/gt20.txt"}}
    cct = {**base, "segmentation": {"ground_truth_subset": "configs/gt20.txt", "method": "cct"}}
    noweak = {**base, "segmentation": {"ground_truth_subset": "gt20.txt", "method": "cct", "weak_labels": False,
                                       "decoders": {"vat": 1, "cutout": 0}}}
    assert [segmentation_name(e) for e in (mix, cct, noweak)] == ["cam+gt20", "cam+gt20+cct", "cam+gt20+cct_noweak"]
    assert semi_supervised_options(semi_supervised_method(mix)) == ""
    assert semi_supervised_options(semi_supervised_method(cct)) == " --semi-method cct"
    assert semi_supervised_options(semi_supervised_method(noweak)) == " --semi-method cct --cct-decoders cutout=0 vat=1"


def test_cct_experiments_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gt.txt").write_text("a\nb\n")
    base = {"classifiers": {"cam": {}}, "seeds": {"cam": {"method": "cam"}}}
    cct = {"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt", "method": "cct"}}
    mix = {"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt"}}
    assert check_references({**base, "experiments": [mix, cct]}) == []  # two networks
    assert check_references({**base, "experiments": [cct, cct]}) == [
        "experiments[1]: classifier 'cam' with seeds 'cam' and ground-truth subset 'gt' (network 'cam+gt+cct') is "
        "listed twice (also experiments[0]); its results would be computed once"]
    # Without weak labels no pseudo masks are needed; mix takes no CCT settings.
    noweak = {**cct, "pseudo_masks": False, "segmentation": {**cct["segmentation"], "weak_labels": False}}
    assert check_references({**base, "experiments": [noweak]}) == []
    assert check_references({**base, "experiments": [{**cct, "pseudo_masks": False}]}) == [
        "experiments[0].segmentation.ground_truth_subset: the other images train on pseudo masks; this experiment "
        "has pseudo_masks: false"]
    wrong = {**mix, "segmentation": {**mix["segmentation"], "weak_labels": False}}
    assert check_references({**base, "experiments": [wrong]}) == [
        "experiments[0].segmentation: weak_labels and decoders are settings of method cct"]
