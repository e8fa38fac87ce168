"""CAM classifier training: learning, determinism, resume, outputs, augmentation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_steps import train_classifier
from wsss_steps.data.adapters import VocLayoutDataset
from wsss_steps.data.images import IGNORE_LABEL, write_image, write_label_mask
from wsss_steps.data.manifest import write_manifest
from wsss_steps.data.manifest_builder import build_manifest
from wsss_steps.networks.io import load_classifier, read_classifier_meta
from wsss_steps.training.augment import TrainAugmentation, epoch_permutation, sample_rng

CLASSES = ("square", "disc")
SIZE = 64


def _draw(rng: np.random.Generator, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(90, 170, size=(SIZE, SIZE, 3)).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for c in classes:
        half = int(rng.integers(8, 14))
        cy, cx = rng.integers(half, SIZE - half, size=2)
        if c == 0:  # red square
            region = (abs(yy - cy) <= half) & (abs(xx - cx) <= half)
            colour = (220, 30, 30)
        else:  # blue disc
            region = (yy - cy) ** 2 + (xx - cx) ** 2 <= half**2
            colour = (30, 40, 220)
        image[region] = colour
        mask[region] = c + 1
    return image, mask


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """24 train and 12 val images of 64 px: red squares, blue discs or both."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    splits = {"train": 24, "val": 12}
    rows = []
    for split, count in splits.items():
        ids = []
        for i in range(count):
            image_id = f"{split}_{i:03d}"
            classes = [[0], [1], [0, 1]][i % 3]
            image, mask = _draw(rng, classes)
            write_image(root / "JPEGImages" / f"{image_id}.jpg", image)
            write_label_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
            rows.append(f"{image_id},{' '.join(CLASSES[c] for c in classes)}")
            ids.append(image_id)
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "labels.csv").write_text("image_id,labels\n" + "\n".join(rows) + "\n")
    dataset = VocLayoutDataset(root, name="shapes")
    out = root / "manifest"
    train = write_manifest(build_manifest(dataset, "train", require_masks=False), out)
    val = write_manifest(build_manifest(dataset, "val", require_masks=False), out)
    return train, val


def _args(manifests: tuple[Path, Path], out_dir: Path, epochs: int = 4, *extra: str) -> list[str]:
    train, val = manifests
    return ["--manifest", str(train), "--val-manifest", str(val), "--out", str(out_dir / "model.pt"),
            "--metrics", str(out_dir / "metrics.csv"), "--summary", str(out_dir / "summary.csv"),
            "--backbone", "small_resnet", "--epochs", str(epochs), "--batch-size", "8",
            "--lr", "0.05", "--resize-long", "48", "80", "--crop", "64", "--seed", "3",
            "--threads", "1", "--name", "cam", "--dataset", "shapes", *extra]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference_run(manifests: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 4-epoch run (checkpoints every epoch)."""
    out = tmp_path_factory.mktemp("reference")
    assert train_classifier.main(_args(manifests, out, 4, "--checkpoint-dir", str(out / "ckpt"))) == 0
    return out


def test_training_learns_and_writes_outputs(reference_run: Path) -> None:
    with (reference_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "val_loss", "val_map", "seconds"]
    assert rows[-1]["step"] == "12"  # 24 images / batch 8 × 4 epochs
    assert float(rows[-1]["val_map"]) >= 0.9, rows
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])

    with (reference_run / "summary.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    assert [r["metric"] for r in summary] == ["map", "ap/square", "ap/disc"]
    assert {(r["dataset"], r["stage"], r["method"], r["classifier"], r["split"]) for r in summary} == \
        {("shapes", "classifier", "cam", "cam", "val")}
    assert float(summary[0]["value"]) == pytest.approx(float(rows[-1]["val_map"]), abs=1e-5)

    model, meta = load_classifier(reference_run / "model.pt", "cpu")
    assert meta["class_names"] == list(CLASSES) and meta["variant"] == "cam"
    assert meta["backbone"] == "small_resnet" and meta["output_stride"] == 8
    assert meta["training"]["epochs"] == 4 and not model.training
    with torch.no_grad():
        cams = model.forward_with_cams(torch.zeros(1, 3, SIZE, SIZE))[1]
    assert cams.shape == (1, 2, SIZE // 8, SIZE // 8)
    assert read_classifier_meta(reference_run / "model.pt")["val_map"] == pytest.approx(meta["val_map"])


def test_same_seed_gives_identical_weights_however_often_it_validates(
        manifests: tuple[Path, Path], reference_run: Path, tmp_path: Path) -> None:
    assert train_classifier.main(_args(manifests, tmp_path, 4, "--validate-every", "3")) == 0
    assert _same_weights(tmp_path / "model.pt", reference_run / "model.pt")
    with (tmp_path / "metrics.csv").open() as handle:
        assert [bool(r["val_map"]) for r in csv.DictReader(handle)] == [False, False, True, True]
    assert read_classifier_meta(tmp_path / "model.pt")["val_map"] == \
        pytest.approx(read_classifier_meta(reference_run / "model.pt")["val_map"])


def test_interrupted_run_resumes_to_the_same_weights(manifests: tuple[Path, Path], reference_run: Path,
                                                     tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = _args(manifests, tmp_path, 4, "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert train_classifier.main([*args, "--stop-after-epochs", "2"]) == 0
    assert not (tmp_path / "model.pt").exists()
    checkpoint = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 6

    assert train_classifier.main(args) == 0
    assert "resuming from" in caplog.text
    assert _same_weights(tmp_path / "model.pt", reference_run / "model.pt")
    with (tmp_path / "metrics.csv").open() as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2", "3", "4"]


def test_checkpoint_of_other_settings_is_not_resumed(manifests: tuple[Path, Path], reference_run: Path,
                                                     tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    other = _args(manifests, tmp_path, 4, *ckpt, "--stop-after-epochs", "1")
    other[other.index("--lr") + 1] = "0.02"
    assert train_classifier.main(other) == 0
    assert train_classifier.main(_args(manifests, tmp_path, 4, *ckpt)) == 0
    log_text = caplog.text
    assert "other settings (differing: lr)" in log_text and "starting fresh" in log_text
    assert _same_weights(tmp_path / "model.pt", reference_run / "model.pt")


def test_a_validation_interval_below_one_is_refused_before_training(manifests: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--validate-every must be ≥ 1, not 0"):
        train_classifier.main(_args(manifests, tmp_path, 4, "--validate-every", "0"))
    assert not (tmp_path / "metrics.csv").exists()


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_classifier.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--manifest", "--val-manifest", "--checkpoint-every", "--backbone-weights",
                   "--no-pretrained", "--output-stride", "--head-lr-mult", "--resize-long",
                   "--num-workers", "--stop-after-epochs"):
        assert option in text


def test_augmentation_is_deterministic_and_marks_padding() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 50, 3)).astype(np.uint8)
    label = np.ones((30, 50), dtype=np.uint8)
    augment = TrainAugmentation(resize_long=(40, 60), crop=64)
    first = augment(image, sample_rng(1, 2, 3), label)
    again = augment(image, sample_rng(1, 2, 3), label)
    other = augment(image, sample_rng(1, 2, 4), label)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["image"], other["image"])
    assert first["image"].shape == (3, 64, 64) and first["image"].dtype == np.float32
    valid = first["valid"]
    assert 0 < valid.mean() < 1  # the long side ≤ 60 < 64: part of the crop is padding
    assert np.all(first["image"][:, ~valid] == 0)
    assert np.all(first["label"][~valid] == IGNORE_LABEL) and np.all(first["label"][valid] == 1)
    assert sorted(epoch_permutation(0, 1, 10).tolist()) == list(range(10))
    assert not np.array_equal(epoch_permutation(0, 1, 10), epoch_permutation(0, 2, 10))


def test_worker_processes_do_not_change_the_weights(manifests: tuple[Path, Path], reference_run: Path,
                                                    tmp_path: Path) -> None:
    assert train_classifier.main(_args(manifests, tmp_path, 4, "--num-workers", "2")) == 0
    assert _same_weights(tmp_path / "model.pt", reference_run / "model.pt")


def test_a_class_absent_from_val_gets_no_ap_row(manifests: tuple[Path, Path], tmp_path: Path) -> None:
    """A val split without a positive image of some class (MSRC's small val has several) leaves
    that class's AP undefined: its row is left out instead of holding an empty value."""
    train, val = manifests
    lines = val.read_text().splitlines()
    squares_only = [lines[0]] + [line for line in lines[1:] if line.split(",")[4] == "square"]  # label_names
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "data" / "val.csv").write_text("\n".join(squares_only) + "\n")
    args = _args((train, tmp_path / "data" / "val.csv"), tmp_path, 1)
    assert train_classifier.main(args) == 0
    with (tmp_path / "summary.csv").open() as handle:
        assert [r["metric"] for r in csv.DictReader(handle)] == ["map", "ap/square"]
