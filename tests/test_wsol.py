"""WSOL (docs/methods.md §8): box IoU, boxes from maps, GT-known / Top-1 Loc, MaxBoxAcc(V2) and PxAP on
hand-computed cases, PxAP against an independent computation, the weight map's score S and its
early-stopping choice, and the steps (WSOL images, softmax classifier, weight-map generator,
maps, evaluation) on a small dataset with boxes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_relation import make_shapes_dataset, one_thread  # noqa: F401 (autouse fixture)
from wsss_steps import (
    evaluate_wsol,
    seeds,
    train_classifier,
    train_weight_map,
    weight_maps,
    wsol_images,
)
from wsss_steps.data.adapters import VocLayoutDataset
from wsss_steps.data.manifest import write_manifest
from wsss_steps.data.manifest_builder import build_manifest
from wsss_steps.evaluation.wsol import WsolCounts, calibrated_threshold, thresholds
from wsss_steps.methods.boxes import box_iou, boxes_from_map, normalize_map
from wsss_steps.methods.weight_map import (
    box_mass_score,
    early_stopping_epoch,
    weight_map_box,
    weight_map_loss,
    weight_map_triplet_loss,
)
from wsss_steps.networks.weight_map import (
    ImageEmbedding,
    build_weight_map_generator,
    load_weight_map_generator,
)
from wsss_steps.store.maps import MapReader, MapWriter
from wsss_steps.training.classification import TripletDataset


def rectangle_map(shape: tuple[int, int], boxes: list[tuple[int, int, int, int, float]]) -> np.ndarray:
    """A map with value v on each inclusive box (x0, y0, x1, y1, v)."""
    score_map = np.zeros(shape)
    for x0, y0, x1, y1, value in boxes:
        score_map[y0:y1 + 1, x0:x1 + 1] = value
    return score_map


def test_box_iou_counts_pixels_of_inclusive_boxes() -> None:
    iou = box_iou(np.array([[0, 0, 9, 9], [0, 0, 0, 0]]), np.array([[5, 5, 14, 14], [0, 0, 9, 9], [20, 20, 25, 25]]))
    assert iou[0, 0] == pytest.approx(25 / 175)
    assert iou[0, 1] == 1.0
    assert iou[0, 2] == 0.0
    assert iou[1, 1] == pytest.approx(1 / 100)  # the empty box (0, 0, 0, 0) is one pixel


def test_boxes_from_map_largest_and_every_contour() -> None:
    score_map = rectangle_map((40, 60), [(5, 3, 24, 12, 1.0), (40, 30, 44, 34, 0.6)])
    largest_low, largest_high = boxes_from_map(score_map, [0.5, 0.7])
    assert largest_low.tolist() == [[5, 3, 24, 12]]  # the 20×10 rectangle beats the 5×5 one
    assert largest_high.tolist() == [[5, 3, 24, 12]]
    every_low, every_high = boxes_from_map(score_map, [0.5, 0.7], all_contours=True)
    assert sorted(every_low.tolist()) == [[5, 3, 24, 12], [40, 30, 44, 34]]
    assert every_high.tolist() == [[5, 3, 24, 12]]  # 0.6 < 0.7: only the first is left


def test_an_all_zero_map_gives_the_empty_box_and_a_miss() -> None:
    zeros = np.zeros((20, 30))
    assert normalize_map(zeros).max() == 0.0
    assert boxes_from_map(zeros, [0.0, 0.5])[0].tolist() == [[0, 0, 0, 0]]
    counts = WsolCounts(num_thresholds=10)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 1
    best = counts.add(zeros, np.array([[5, 5, 9, 9]]), mask=mask)
    assert best.max() == 0.0
    assert counts.max_box_acc() == 0.0 and counts.max_box_acc_v2() == 0.0
    assert counts.pxap() == pytest.approx(25 / 600)  # every pixel at score 0: precision = foreground share


def test_counts_gt_known_top1_and_maxboxacc_by_hand() -> None:
    counts = WsolCounts(num_thresholds=10)
    # Image A: a 10×10 object at (10..19, 10..19); the map is 1.0 there and 0.3 on a 30×30 halo
    # around it: the box is the halo (IoU 100/900) below 0.3 and the object at 0.3 and above.
    map_a = rectangle_map((40, 40), [(0, 0, 29, 29, 0.3), (10, 10, 19, 19, 1.0)])
    best_a = counts.add(map_a, np.array([[10, 10, 19, 19]]), top1_correct=False)
    assert best_a[:3].tolist() == pytest.approx([1 / 9] * 3) and (best_a[3:] == 1.0).all()
    # Image B: two ground-truth boxes; the map covers the second one exactly at every threshold.
    map_b = rectangle_map((40, 40), [(20, 0, 39, 9, 0.8)])
    counts.add(map_b, np.array([[0, 0, 4, 4], [20, 0, 39, 9]]), top1_correct=True)
    # Thresholds 0.0 .. 0.9: image B hits everywhere (0.8/0.8 normalised to 1), A from 0.3 on.
    assert counts.gt_known().tolist() == pytest.approx([0.5] * 3 + [1.0] * 7)
    assert counts.top1().tolist() == pytest.approx([0.5] * 10)
    assert counts.max_box_acc() == 1.0
    assert calibrated_threshold(counts) == pytest.approx(0.3)  # the lowest of the equal best
    # Every contour: the same boxes here (each binary map has one region).
    per_delta = counts.box_accuracy_all_contours().max(axis=1)
    assert per_delta.tolist() == [1.0, 1.0, 1.0]


def test_a_threshold_tie_keeps_the_lowest_and_maxboxacc_v2_averages_the_deltas() -> None:
    counts = WsolCounts(num_thresholds=4)
    # A 10×10 object; the map marks a 10×14 box (IoU 100/140 = 0.71) at 1.0 and 0.4 beyond.
    score_map = rectangle_map((30, 30), [(0, 0, 29, 29, 0.4), (5, 5, 14, 18, 1.0)])
    counts.add(score_map, np.array([[5, 5, 14, 14]]))
    assert counts.gt_known().tolist() == [0.0, 0.0, 1.0, 1.0]  # thresholds 0, .25 (the 0.4 halo), .5, .75
    assert calibrated_threshold(counts) == 0.5
    # δ 0.3 / 0.5 / 0.7 with every contour: IoU 0.714 passes all three.
    assert counts.max_box_acc_v2() == pytest.approx(1.0)
    tighter = WsolCounts(num_thresholds=4, iou_thresholds=(0.3, 0.5, 0.75))
    tighter.add(score_map, np.array([[5, 5, 14, 14]]))
    assert tighter.max_box_acc_v2() == pytest.approx(2 / 3)


def _exact_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP = Σ over distinct scores, high to low, of (recall step) × precision at that score."""
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    total, ap, previous_recall = positives.sum(), 0.0, 0.0
    for level in np.unique(scores)[::-1]:
        selected = scores >= level
        true_positive = positives[selected].sum()
        recall = true_positive / total
        ap += (recall - previous_recall) * (true_positive / selected.sum())
        previous_recall = recall
    return float(ap)


def test_pxap_equals_an_exact_average_precision_on_random_maps() -> None:
    rng = np.random.default_rng(3)
    counts = WsolCounts()
    levels = np.arange(101) / 100  # scores on the thresholds' grid: the histogram loses nothing
    all_scores, all_positive = [], []
    for _ in range(5):
        mask = np.zeros((24, 32), np.uint8)
        y, x = rng.integers(0, 12), rng.integers(0, 16)
        mask[y:y + 10, x:x + 14] = 3
        mask[rng.random(mask.shape) < 0.05] = 255  # ignored pixels
        score_map = levels[np.clip(rng.integers(0, 60, mask.shape) + 40 * (mask == 3), 0, 100)]
        score_map.flat[0] = 1.0  # the maximum is 1: normalisation keeps the grid values
        counts.add(score_map, np.array([[x, y, x + 13, y + 9]]), mask=mask)
        valid = mask != 255
        all_scores.append(score_map[valid])
        all_positive.append(mask[valid] == 3)
    expected = _exact_average_precision(np.concatenate(all_scores), np.concatenate(all_positive))
    assert counts.pxap() == pytest.approx(expected, abs=1e-12)
    assert 0.3 < expected < 1.0
    assert len(thresholds()) == 100


def test_box_mass_score_and_the_paper_box() -> None:
    compact = rectangle_map((30, 30), [(10, 10, 19, 19, 1.0)])
    assert box_mass_score(compact) == 1.0
    assert weight_map_box(compact).tolist() == [10, 10, 19, 19]
    # Two equal blobs apart: the box holds the larger one only.
    split = rectangle_map((30, 30), [(0, 0, 5, 5, 1.0), (20, 20, 29, 29, 1.0)])
    assert box_mass_score(split) == pytest.approx(100 / 136)
    # Values below max/10 are zeroed: a faint haze does not count in S.
    hazy = compact + 0.05
    assert box_mass_score(hazy) == 1.0
    assert box_mass_score(np.zeros((10, 10))) == 0.0


def test_early_stopping_chooses_the_epoch_of_the_most_compact_maps() -> None:
    rng = np.random.default_rng(0)
    diffuse = (rng.random((3, 32, 32)) < 0.15) * 0.9  # epoch 1: speckle everywhere
    compact = np.stack([rectangle_map((32, 32), [(8 + i, 8, 20 + i, 20, 0.9)]) for i in range(3)])  # epoch 2
    scattered = np.stack([rectangle_map((32, 32), [(0, 0, 6, 6, 0.9), (20, 20, 30, 30, 0.9)])] * 3)  # epoch 3
    empty = np.zeros((3, 32, 32))  # epoch 4: the generator collapsed
    means = [float(np.mean([box_mass_score(m) for m in epoch])) for epoch in (diffuse, compact, scattered, empty)]
    assert means[1] == 1.0 and means[3] == 0.0 and means[0] < means[2] < 1.0
    assert early_stopping_epoch(means) == 2
    assert early_stopping_epoch([0.5, 0.7, 0.7]) == 2  # the first of equals
    assert early_stopping_epoch([float("nan"), 0.1]) == 2
    with pytest.raises(ValueError, match="no finite"):
        early_stopping_epoch([float("nan")])


def test_weight_map_loss_is_ce_of_the_masked_prediction_plus_the_mean_weight() -> None:
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x.mean(dim=(2, 3)))

    classifier = Tiny()
    weights = torch.rand(2, 1, 8, 8)
    images = torch.randn(2, 3, 8, 8)
    loss, parts = weight_map_loss(classifier, lambda x: weights, images, l1_weight=2.0)
    with torch.no_grad():
        p = torch.softmax(classifier(images), 1)
        q = torch.log_softmax(classifier(images * weights), 1)
    assert parts["ce"] == pytest.approx(float(-(p * q).sum(1).mean()), rel=1e-6)
    assert parts["l1"] == pytest.approx(float(weights.mean()), rel=1e-6)
    assert float(loss) == pytest.approx(parts["ce"] + 2.0 * parts["l1"], rel=1e-6)


def test_method_ii_loss_is_inner_plus_outer_triplets_plus_the_mean_weight() -> None:
    torch.manual_seed(0)
    backbone = torch.nn.Conv2d(3, 5, 1)
    embedding = ImageEmbedding(backbone)
    anchors, positives, negatives = (torch.randn(2, 3, 6, 6) for _ in range(3))
    weights = torch.rand(6, 1, 6, 6, requires_grad=True)
    loss, parts = weight_map_triplet_loss(embedding, lambda x: weights, anchors, positives, negatives,
                                          reg_weight=0.5, margin=1.0)
    images = torch.cat([anchors, positives, negatives])

    def embed(x: torch.Tensor) -> torch.Tensor:
        pooled = backbone(x).mean(dim=(2, 3))
        return pooled / pooled.norm(dim=1, keepdim=True)

    def triplet(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> float:
        # max(0, d(a, p) − d(a, n) + margin) with torch's eps inside the distance, averaged
        d = torch.nn.functional.pairwise_distance
        return float((d(a, p) - d(a, n) + 1.0).clamp(min=0).mean())

    with torch.no_grad():
        fg, bg = embed(images * weights), embed(images * (1 - weights))
        inner = triplet(embed(images), fg, bg)
        outer = triplet(fg[:2], fg[2:4], fg[4:])
    assert parts["inner"] == pytest.approx(inner, rel=1e-5)
    assert parts["outer"] == pytest.approx(outer, rel=1e-5)
    assert parts["reg"] == pytest.approx(float(weights.detach().mean()), rel=1e-6)
    assert loss.item() == pytest.approx(inner + outer + 0.5 * parts["reg"], rel=1e-5)
    loss.backward()
    assert weights.grad is not None and float(weights.grad.abs().sum()) > 0


def test_triplets_pair_each_anchor_with_its_class_and_another(tmp_path: Path) -> None:
    manifests = make_box_dataset(tmp_path / "data", count=18)
    wsol = tmp_path / "wsol" / "train.csv"
    wsol_images.main(["--manifest", str(manifests["train"]), "--out", str(wsol)])
    from wsss_steps.data.manifest import read_manifest

    manifest = read_manifest(wsol)
    triplets = TripletDataset(manifest, seed=3)
    classes = [r.labels[0] for r in manifest.records]
    pairs = [triplets.partners(i) for i in range(len(triplets))]
    for index, (positive, negative) in enumerate(pairs):
        assert classes[positive] == classes[index] and positive != index
        assert classes[negative] != classes[index]
    assert pairs == [TripletDataset(manifest, seed=3).partners(i) for i in range(len(triplets))]
    triplets.set_epoch(1)
    assert [triplets.partners(i) for i in range(len(triplets))] != pairs  # drawn anew each epoch
    anchor, positive, negative = triplets[0]
    assert anchor.shape == positive.shape == negative.shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match="one class per image"):
        TripletDataset(read_manifest(manifests["train"]))


def test_the_generator_gives_one_weight_per_input_pixel() -> None:
    torch.manual_seed(0)
    generator = build_weight_map_generator(pretrained=False).eval()
    with torch.no_grad():
        out = generator(torch.randn(1, 3, 45, 70))
    assert out.shape == (1, 1, 45, 70)
    assert float(out.min()) > 0.0 and float(out.max()) < 1.0
    assert [block.convs[0].in_channels for block in generator.blocks] == [1280 + 112, 256 + 40, 128 + 24,
                                                                          64 + 16, 32]


SIZE = 48


def make_box_dataset(root: Path, count: int = 12) -> dict[str, Path]:
    """`make_shapes_dataset` at 48 px with boxes: train and val (the last third) manifests."""
    make_shapes_dataset(root, count, size=SIZE, half=8, val_count=count // 3, seed=1)
    dataset = VocLayoutDataset(root, name="boxes")
    return {split: write_manifest(build_manifest(dataset, split, require_masks=True), root / "manifest")
            for split in ("train", "val")}


def read_rows(path: Path) -> dict[str, float]:
    with path.open() as handle:
        return {row["metric"]: float(row["value"]) for row in csv.DictReader(handle)}


def test_wsol_images_keep_one_class_images_and_say_what_they_left_out(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    manifests = make_box_dataset(tmp_path / "data")
    out = tmp_path / "wsol" / "train.csv"
    with caplog.at_level("INFO"):
        assert wsol_images.main(["--manifest", str(manifests["train"]), "--out", str(out)]) == 0
    ids = [row["image_id"] for row in csv.DictReader(out.open())]
    assert ids == ["img0", "img1", "img3", "img4", "img6", "img7"]
    assert "left out 2 image(s)" in caplog.text and "several classes" in caplog.text and "img2" in caplog.text
    with pytest.raises(SystemExit, match="several classes: 2"):
        wsol_images.main(["--manifest", str(manifests["train"]), "--out", str(out), "--images", "all"])


def test_softmax_classifier_refuses_several_classes_and_other_variants(tmp_path: Path) -> None:
    manifests = make_box_dataset(tmp_path / "data")
    common = ["--val-manifest", str(manifests["val"]), "--out", str(tmp_path / "m.pt"), "--loss", "softmax",
              "--epochs", "1", "--batch-size", "2", "--crop", "32", "--resize-long", "40", "48"]
    with pytest.raises(SystemExit, match="have more than one class"):
        train_classifier.main(["--manifest", str(manifests["train"]), *common])
    with pytest.raises(SystemExit, match="--loss softmax is for the variant cam"):
        train_classifier.main(["--manifest", str(manifests["train"]), *common, "--variant", "puzzle"])


@pytest.fixture(scope="module")
def wsol_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Softmax classifier → CAM maps → weight-map generator → maps on the WSOL images."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("wsol")
    manifests = make_box_dataset(root / "data", count=36)
    wsol = {}
    for split, path in manifests.items():
        wsol[split] = root / "wsol" / f"{split}.csv"
        wsol_images.main(["--manifest", str(path), "--out", str(wsol[split])])
    classifier = root / "classifier.pt"
    train_classifier.main(["--manifest", str(wsol["train"]), "--val-manifest", str(wsol["val"]), "--out",
                           str(classifier), "--loss", "softmax", "--epochs", "8", "--batch-size", "4", "--lr", "0.02",
                           "--head-lr-mult", "1", "--crop", "48", "--resize-long", "40", "56", "--summary",
                           str(root / "classifier_rows.csv")])
    for split in ("train", "val"):
        seeds.main(["--method", "cam", "--classifier", str(classifier), "--manifest", str(wsol[split]),
                    "--out", str(root / f"cam_{split}.h5"), "--scales", "1.0"])
    generator = root / "weight_map.pt"
    train_weight_map.main(["--classifier", str(classifier), "--manifest", str(wsol["train"]), "--val-manifest",
                           str(wsol["val"]), "--out", str(generator), "--metrics", str(root / "wm.csv"),
                           "--checkpoint-dir", str(root / "wm_checkpoints"), "--epochs", "3", "--batch-size", "4",
                           "--crop", "48", "--resize-long", "40", "56", "--no-pretrained", "--lr", "1e-3"])
    weight_maps.main(["--model", str(generator), "--manifest", str(wsol["val"]), "--out", str(root / "wm_val.h5")])
    train_weight_map.main(["--classifier", str(classifier), "--manifest", str(wsol["train"]), "--val-manifest",
                           str(wsol["val"]), "--out", str(root / "weight_map_ii.pt"), "--metrics",
                           str(root / "wm_ii.csv"), "--checkpoint-dir", str(root / "wm_ii_checkpoints"), "--epochs",
                           "2", "--batch-size", "4", "--crop", "48", "--resize-long", "40", "56", "--no-pretrained",
                           "--lr", "1e-3", "--method", "ii", "--embedding-epochs", "2"])
    return {"root": root, "classifier": classifier, "generator": generator, **{f"wsol_{k}": v for k, v in wsol.items()}}


def test_softmax_classifier_reports_top1_accuracy(wsol_run: dict[str, Path]) -> None:
    rows = read_rows(wsol_run["root"] / "classifier_rows.csv")
    assert rows["top1_accuracy"] >= 0.75  # square against disc, 8 epochs
    with (wsol_run["root"] / "classifier_rows.csv").open() as handle:
        assert {row["metric"] for row in csv.DictReader(handle)} >= {"map", "top1_accuracy"}


def test_weight_map_keeps_the_epoch_of_the_highest_score(wsol_run: dict[str, Path]) -> None:
    _, meta = load_weight_map_generator(wsol_run["generator"])
    with (wsol_run["root"] / "wm.csv").open() as handle:
        history = list(csv.DictReader(handle))
    scores = [float(row["val_score"]) for row in history]
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert meta["chosen_epoch"] == int(np.argmax(scores)) + 1
    assert [e["score"] for e in meta["per_epoch"]] == pytest.approx(scores)
    assert all(row["val_gt_known"] != "" for row in history)  # the val images have boxes
    assert sorted(p.name for p in (wsol_run["root"] / "wm_checkpoints").glob("epoch-*.pt")) == [
        "epoch-001.pt", "epoch-002.pt", "epoch-003.pt"]
    with MapReader(wsol_run["root"] / "wm_val.h5") as reader:
        first = reader.read(reader.ids[0])["weight_map"]
    assert first.shape == (SIZE, SIZE)


def test_method_ii_trains_f_by_triplets_then_the_generator(wsol_run: dict[str, Path]) -> None:
    root = wsol_run["root"]
    _, meta = load_weight_map_generator(root / "weight_map_ii.pt")
    assert meta["method"] == "ii" and meta["training"]["method"] == "ii"
    assert meta["training"]["embedding"]["epochs"] == 2 and meta["training"]["margin"] == 1.0
    with (root / "wm_ii.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 2 and all(row["inner"] and row["outer"] and row["reg"] and not row["ce"] for row in history)
    assert meta["chosen_epoch"] == int(np.argmax([float(r["val_score"]) for r in history])) + 1
    assert (root / "wm_ii_checkpoints/embedding/last.pt").is_file()
    _, meta_i = load_weight_map_generator(wsol_run["generator"])
    assert "method" not in meta_i["training"]  # method I's identity is what it was before method II
    # Stopped after the generator's first epoch and run again: f is not retrained, g continues, and
    # the result is the straight run's, bit for bit.
    args = ["--classifier", str(wsol_run["classifier"]), "--manifest", str(wsol_run["wsol_train"]),
            "--val-manifest", str(wsol_run["wsol_val"]), "--out", str(root / "resumed_ii.pt"), "--checkpoint-dir",
            str(root / "resumed_ii"), "--epochs", "2", "--batch-size", "4", "--crop", "48", "--resize-long", "40",
            "56", "--no-pretrained", "--lr", "1e-3", "--method", "ii", "--embedding-epochs", "2"]
    assert train_weight_map.main([*args, "--stop-after-epochs", "1"]) == 0 and not (root / "resumed_ii.pt").exists()
    embedding_checkpoint = (root / "resumed_ii/embedding/last.pt").stat().st_mtime_ns
    assert train_weight_map.main(args) == 0
    assert (root / "resumed_ii/embedding/last.pt").stat().st_mtime_ns == embedding_checkpoint
    straight, _ = load_weight_map_generator(root / "weight_map_ii.pt")
    resumed, _ = load_weight_map_generator(root / "resumed_ii.pt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_evaluate_wsol_writes_rows_curve_and_boxes(wsol_run: dict[str, Path]) -> None:
    root = wsol_run["root"]
    args = ["--maps", str(root / "cam_val.h5"), "--manifest", str(wsol_run["wsol_val"]), "--calibration-maps",
            str(root / "cam_train.h5"), "--calibration-manifest", str(wsol_run["wsol_train"]), "--classifier",
            str(wsol_run["classifier"]), "--summary", str(root / "rows.csv"), "--curve", str(root / "curve.csv"),
            "--boxes", str(root / "boxes.csv"), "--method", "cam", "--classifier-name", "softmax"]
    assert evaluate_wsol.main(args) == 0
    rows = read_rows(root / "rows.csv")
    assert set(rows) == {"gt_known_loc", "top1_loc", "maxboxacc", "maxboxacc_v2", "pxap", "best_threshold",
                         "num_images", "top1_accuracy"}
    assert rows["num_images"] == 8  # val: img24..img35 but the 4 with both classes
    assert rows["top1_loc"] <= rows["gt_known_loc"] <= rows["maxboxacc"]
    assert rows["gt_known_loc"] >= 0.5  # CAMs of a red square and a blue disc on grey noise
    with (root / "boxes.csv").open() as handle:
        boxes = list(csv.DictReader(handle))
    assert len(boxes) == 8
    assert np.mean([int(b["hit"]) for b in boxes]) == pytest.approx(rows["gt_known_loc"])
    with (root / "curve.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    assert {row["split"] for row in curve} == {"evaluation", "calibration"} and len(curve) == 200
    calibration = [row for row in curve if row["split"] == "calibration"]
    best = max(float(row["gt_known"]) for row in calibration)
    first_best = next(float(row["threshold"]) for row in calibration if float(row["gt_known"]) == best)
    assert rows["best_threshold"] == pytest.approx(first_best)
    # The weight map, at its fixed max/10, without calibration maps.
    assert evaluate_wsol.main(["--maps", str(root / "wm_val.h5"), "--manifest", str(wsol_run["wsol_val"]),
                               "--threshold", "0.1", "--summary", str(root / "wm_rows.csv"),
                               "--method", "weight_map"]) == 0
    _, meta = load_weight_map_generator(wsol_run["generator"])
    chosen = meta["per_epoch"][meta["chosen_epoch"] - 1]["gt_known"]
    assert read_rows(root / "wm_rows.csv")["gt_known_loc"] == pytest.approx(chosen)


def test_evaluate_wsol_errors_name_the_image(tmp_path: Path) -> None:
    manifests = make_box_dataset(tmp_path / "data")
    wsol = tmp_path / "wsol" / "val.csv"
    wsol_images.main(["--manifest", str(manifests["val"]), "--out", str(wsol)])
    maps = tmp_path / "maps.h5"
    with MapWriter(maps, stage="seeds", method="cam", params={}, dataset="boxes") as writer:
        for image_id in ("img9", "img10"):
            writer.write(image_id, {"cam": np.zeros((1, SIZE, SIZE), np.float32), "keys": np.array([1])},
                         {"height": SIZE, "width": SIZE})
        writer.finish(["img9", "img10"])
    # img9 is a square (class 0): its file holds the disc's map only.
    with pytest.raises(SystemExit, match="'img9'.*no map of its class 0"):
        evaluate_wsol.main(["--maps", str(maps), "--manifest", str(wsol), "--threshold", "0.5", "--summary",
                            str(tmp_path / "rows.csv"), "--method", "cam"])
    with pytest.raises(SystemExit, match="calibrate needs --calibration-maps"):
        evaluate_wsol.main(["--maps", str(maps), "--manifest", str(wsol), "--summary", str(tmp_path / "r.csv"),
                            "--method", "cam"])
