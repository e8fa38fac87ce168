"""Classifier variants of docs/methods.md §3 (Puzzle-CAM, OC-CSE, P-OC, P-NOC, label smoothing): the
tensor operations on constructed inputs, which network each loss reaches, the schedules, and the
trained P-NOC's bitwise resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.test_train_classifier import _args, _same_weights, manifests, reference_run  # noqa: F401
from wsss_steps import train_classifier
from wsss_steps.methods.erasure import (
    choose_positive_class,
    hard_erasure_mask,
    merge_tiles,
    smooth_labels,
    soft_erasure_map,
    tile_images,
)
from wsss_steps.networks.backbones import build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.io import load_classifier
from wsss_steps.training.variants import CLASSIFIER_VARIANTS, VariantSettings


def _classifier(seed: int, classes: int = 3) -> CamClassifier:
    torch.manual_seed(seed)
    return CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), classes)


def test_puzzle_tiles_and_their_merge_put_each_tile_back_in_place() -> None:
    images = torch.arange(2 * 1 * 4 * 6, dtype=torch.float).reshape(2, 1, 4, 6)
    tiles = tile_images(images)
    assert tiles.shape == (8, 1, 2, 3)
    # Tile (i, j) of image b sits at (2i + j)·B + b: image 1's bottom-left tile is index 5.
    assert torch.equal(tiles[5], images[1, :, 2:, :3])
    assert torch.equal(tiles[0], images[0, :, :2, :3])
    assert torch.equal(merge_tiles(tiles, 2), images)
    # Tile CAMs known by construction: tile (i, j) is constant 10·(2i + j) + b.
    known = torch.stack([torch.full((3, 2, 2), 10.0 * piece + b) for piece in range(4) for b in range(2)])
    merged = merge_tiles(known, 2)
    assert merged.shape == (2, 3, 4, 4)
    for b in range(2):
        assert merged[b, :, :2, :2].unique().tolist() == [b]
        assert merged[b, :, :2, 2:].unique().tolist() == [10 + b]
        assert merged[b, :, 2:, :2].unique().tolist() == [20 + b]
        assert merged[b, :, 2:, 2:].unique().tolist() == [30 + b]
    with pytest.raises(ValueError, match="2×2 grid"):
        tile_images(torch.zeros(1, 3, 5, 4))


def test_class_choice_is_one_positive_per_image_and_none_without_labels() -> None:
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0]])
    for seed in range(20):
        chosen = choose_positive_class(labels, torch.Generator().manual_seed(seed))
        assert chosen.sum(1).tolist() == [1.0, 1.0, 0.0]
        assert bool((chosen <= labels).all())
    picks = {int(choose_positive_class(labels, torch.Generator().manual_seed(s))[0].argmax()) for s in range(40)}
    assert picks == {0, 2}


def test_soft_and_hard_erasure_on_a_constructed_cam() -> None:
    cams = torch.zeros(2, 2, 2, 2)
    cams[0, 1] = torch.tensor([[4.0, 1.0], [-3.0, 0.5]])
    cams[1, 0] = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    chosen = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    batch = soft_erasure_map(cams, chosen, (2, 2), "batch")
    image = soft_erasure_map(cams, chosen, (2, 2), "image")
    assert batch[0, 0].flatten().tolist() == pytest.approx([4 / 4, 1 / 4, 0, 0.5 / 4], abs=1e-5)
    assert batch[1, 0].flatten().tolist() == pytest.approx([2 / 4, 0, 0, 0], abs=1e-5)  # the batch's max is 4
    assert image[1, 0].flatten().tolist() == pytest.approx([1, 0, 0, 0], abs=1e-5)
    hard = hard_erasure_mask(cams, chosen, (2, 2), 0.2)  # per image: erased where ψ > 0.2
    assert hard[0, 0].tolist() == [[1, 1], [0, 0]]  # ψ = 1, 0.25, 0, 0.125
    formula = hard_erasure_mask(cams, chosen, (2, 2), 0.2, "methods_formula")  # where ψ ≥ 0.8
    assert formula[0, 0].tolist() == [[1, 0], [0, 0]]
    assert smooth_labels(torch.tensor([1.0, 0.0]), 0.1).tolist() == pytest.approx([0.95, 0.05])


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=generator), torch.tensor(
        [[1.0, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]])


def test_oc_cse_term_reads_the_other_labels_on_the_soft_erased_image() -> None:
    model, ordinary = _classifier(0), _classifier(1)
    seen: list[torch.Tensor] = []
    ordinary.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    settings = VariantSettings(cse_lambda=(1.0, 1.0))
    variant = CLASSIFIER_VARIANTS["oc_cse"](settings, seed=5, ordinary=ordinary)
    images, labels = _batch()
    model.eval()
    loss, parts = variant.loss(model, images, labels, step=7, total_steps=10)

    chosen = choose_positive_class(labels, variant._step_generator(7))
    with torch.no_grad():
        logits, cams = model.forward_with_cams(images)
        psi = F.relu(F.interpolate((cams * chosen[:, :, None, None]).sum(1, keepdim=True), size=(32, 32),
                                   mode="bilinear", align_corners=False))
        psi = psi / (psi.max() + 1e-5)
        expected_input = images * (1 - psi)
        others = labels - chosen
        expected = F.multilabel_soft_margin_loss(ordinary(expected_input), others)
        class_loss = F.multilabel_soft_margin_loss(logits, labels)
    assert len(seen) == 2 and torch.allclose(seen[0], expected_input, atol=1e-6)  # the variant's call, then ours
    assert others.sum().item() == labels.sum().item() - 4 and bool((others >= 0).all())
    assert parts["erased_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(class_loss.item() + expected.item(), rel=1e-5)


def test_gradients_reach_f_through_the_erased_image_and_never_the_frozen_network() -> None:
    images, labels = _batch(1)
    grads = {}
    for name in ("cam", "oc_cse"):
        model, ordinary = _classifier(0), _classifier(1)
        variant = CLASSIFIER_VARIANTS[name](VariantSettings(), seed=0,
                                            ordinary=ordinary if name == "oc_cse" else None)
        loss, _ = variant.loss(model, images, labels, step=3, total_steps=10)
        loss.backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.backbone.parameters()])
        if name == "oc_cse":
            assert all(p.grad is None for p in ordinary.parameters())
            assert not ordinary.training
    assert grads["cam"].abs().sum() > 0
    assert not torch.allclose(grads["cam"], grads["oc_cse"])  # the erased term's gradient reaches f


def _p_noc(noc_every: int = 1) -> tuple[CamClassifier, CamClassifier, object, torch.optim.Optimizer]:
    model, noc = _classifier(0), _classifier(1)
    noc_optimizer = torch.optim.SGD(noc.parameters(), lr=0.1, momentum=0.9)
    variant = CLASSIFIER_VARIANTS["p_noc"](VariantSettings(noc_every=noc_every, noc_lambda=(1.0, 1.0)), seed=0,
                                           ordinary=noc, ordinary_optimizer=noc_optimizer,
                                           ordinary_base_lrs=(0.1,))
    return model, noc, variant, torch.optim.SGD(model.parameters(), lr=0.1)


def _snapshot(network: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in network.parameters()]


def _changed(network: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(network.parameters(), before, strict=True))


def test_p_noc_changes_noc_only_in_its_steps_and_f_only_in_fs() -> None:
    model, noc, variant, optimizer = _p_noc(noc_every=2)
    images, labels = _batch(2)
    for step in range(2):
        f_before, noc_before = _snapshot(model), _snapshot(noc)
        loss, _ = variant.loss(model, images, labels, step, total_steps=10)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in noc.parameters())
        optimizer.step()
        assert _changed(model, f_before) and not _changed(noc, noc_before)
        f_after = _snapshot(model)
        parts = variant.after_step(step, total_steps=10)
        assert not _changed(model, f_after)
        # k_noc = 2: noc trains after the second step of f only.
        assert _changed(noc, noc_before) == (step == 1)
        assert ("noc_loss" in parts) == (step == 1)
        assert not noc.training and not any(p.requires_grad for p in noc.parameters())


def test_variant_weights_at_the_first_middle_and_last_step() -> None:
    model, noc, variant, _ = _p_noc()
    variant.settings = VariantSettings()  # the paper's ramps
    images, labels = _batch(3)
    seen = {}
    for step in (0, 50, 99):
        _, parts = variant.loss(model, images, labels, step, total_steps=100)
        seen[step] = (parts["alpha"], parts["cse_lambda"], variant.after_step(step, 100)["noc_lambda"])
    assert seen[0] == pytest.approx((0.0, 0.3, 0.0))
    assert seen[50] == pytest.approx((4.0, 0.65, 0.5))  # α reaches 4 at half of training
    assert seen[99] == pytest.approx((4.0, 0.3 + 0.7 * 0.99, 0.99))


def _variant_args(manifests: tuple[Path, Path], out: Path, variant: str, ordinary: Path | None,  # noqa: F811
                  *extra: str) -> list[str]:
    args = _args(manifests, out, 4, "--variant", variant, "--name", variant, *extra)
    return [*args, "--ordinary", str(ordinary)] if ordinary is not None else args


def test_cli_rejects_missing_ordinary_and_a_crop_the_tiles_cannot_merge(manifests, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(SystemExit, match="needs --ordinary"):
        train_classifier.main(_variant_args(manifests, tmp_path, "p_noc", None))
    with pytest.raises(SystemExit, match="read by oc_cse, p_oc and p_noc only"):
        train_classifier.main(_variant_args(manifests, tmp_path, "puzzle", tmp_path / "x.pt"))
    args = _variant_args(manifests, tmp_path, "puzzle", None)
    args[args.index("--crop") + 1] = "72"
    with pytest.raises(SystemExit, match="divisible by 2 × the output stride"):
        train_classifier.main(args)


@pytest.fixture(scope="module")
def p_noc_run(manifests, reference_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("p_noc")
    args = _variant_args(manifests, out, "p_noc", reference_run / "model.pt", "--checkpoint-dir", str(out / "ckpt"))
    assert train_classifier.main(args) == 0
    return out


def test_p_noc_trains_a_cam_classifier_with_its_terms_logged(p_noc_run: Path) -> None:
    model, meta = load_classifier(p_noc_run / "model.pt")
    assert meta["variant"] == "p_noc" and isinstance(model, CamClassifier)
    assert meta["training"]["variant_settings"]["noc_delta"] == 0.2 and meta["training"]["ordinary"]
    with (p_noc_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and max(float(row["val_map"]) for row in rows) >= 0.95, rows
    for column in ("reconstruction_loss", "erased_loss", "noc_loss", "erased_fraction"):
        assert all(float(row[column]) >= 0 for row in rows), column
    assert float(rows[0]["alpha"]) < float(rows[-1]["alpha"]) == pytest.approx(4.0)
    checkpoint = torch.load(p_noc_run / "ckpt" / "last.pt", weights_only=True)
    assert {"model", "optimizer"} <= set(checkpoint) and set(checkpoint["extra"]) == {"noc", "noc_optimizer"}


def test_p_noc_killed_mid_epoch_resumes_to_the_same_weights(manifests, reference_run: Path, p_noc_run: Path,  # noqa: F811
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _variant_args(manifests, tmp_path, "p_noc", reference_run / "model.pt",
                         "--checkpoint-dir", str(tmp_path / "ckpt"))
    original = CLASSIFIER_VARIANTS["p_noc"].after_step

    def killed_at_step_7(self, step: int, total_steps: int) -> dict[str, float]:  # epoch 3 of 3-step epochs
        if step == 7:
            raise KeyboardInterrupt
        return original(self, step, total_steps)

    monkeypatch.setattr(CLASSIFIER_VARIANTS["p_noc"], "after_step", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train_classifier.main(args)
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(CLASSIFIER_VARIANTS["p_noc"], "after_step", original)
    assert train_classifier.main(args) == 0
    assert _same_weights(tmp_path / "model.pt", p_noc_run / "model.pt")
    whole = torch.load(p_noc_run / "ckpt" / "last.pt", weights_only=True)["extra"]["noc"]
    resumed = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["extra"]["noc"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("variant", ["puzzle", "p_oc"])
def test_other_variants_train_and_learn(manifests, reference_run: Path, tmp_path: Path, variant: str) -> None:  # noqa: F811
    ordinary = reference_run / "model.pt" if variant == "p_oc" else None
    # 8 epochs at lr 0.02: 4 epochs (12 steps) at lr 0.05 gave a val mAP anywhere from 0.85 to 0.99
    # with the CPU's float rounding (it passed on one runner and failed on an AMD EPYC one). Even
    # so, Puzzle's best val mAP is 0.939 on an AMD EPYC (epoch 4, as α ramps to 4 the loss spikes)
    # and ≥ 0.95 elsewhere: "learns" is a best mAP ≥ 0.9 (a random ranking: ≈ 0.5) and a lower
    # classification loss at the end than in epoch 1.
    assert train_classifier.main(_variant_args(manifests, tmp_path, variant, ordinary,
                                               "--label-smoothing", "0.1", "--epochs", "8", "--lr", "0.02")) == 0
    _, meta = load_classifier(tmp_path / "model.pt")
    assert meta["training"]["variant_settings"]["label_smoothing"] == 0.1
    with (tmp_path / "metrics.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert max(float(row["val_map"]) for row in history) >= 0.9
    assert float(history[-1]["class_loss"]) < float(history[0]["class_loss"])
