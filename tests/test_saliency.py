"""C²AM / C²AM-H saliency (docs/methods.md §4): the contrastive loss against a hand computation, the rank
weights, the polarity fix, the hints, the scores, and the steps (train, maps, evaluation, seeds
with a saliency background, the refinement network) on a small dataset."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_relation import make_shapes_dataset, one_thread  # noqa: F401 (autouse fixture)
from tests.test_training_loop import Points
from wsss_steps import (
    evaluate_masks,
    evaluate_saliency,
    saliency_maps,
    saliency_seeds,
    train_saliency,
)
from wsss_steps.data.images import IGNORE_LABEL, read_label_mask
from wsss_steps.evaluation.saliency import SaliencyCounts, foreground_map
from wsss_steps.methods.saliency import (
    border_foreground_fraction,
    contrastive_loss,
    hint_loss,
    hint_mask,
    needs_polarity_flip,
    pseudo_saliency_mask,
    rank_weights,
)
from wsss_steps.networks.saliency import build_saliency_net, load_saliency, save_saliency
from wsss_steps.store.maps import MapReader, MapWriter
from wsss_steps.training.loop import LoopSettings, Trainee, train


def _hand_loss(features: np.ndarray, probability: np.ndarray, alpha: float) -> float:
    """docs/methods.md §4 written out pair by pair, with its own ranking (np.argsort per row)."""
    n = features.shape[0]
    fg = [(features[i] * probability[i]).sum(axis=(1, 2)) / probability[i].sum() for i in range(n)]
    bg = [(features[i] * (1 - probability[i])).sum(axis=(1, 2)) / (1 - probability[i]).sum() for i in range(n)]

    def sim(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), 0.0005, 0.9995))

    def pull(vectors: list[np.ndarray]) -> float:
        total = 0.0
        for i in range(n):
            others = [j for j in range(n) if j != i]
            sims = [sim(vectors[i], vectors[j]) for j in others]
            order = list(np.argsort(-np.asarray(sims), kind="stable"))
            for position, k in enumerate(order):
                total += math.exp(-alpha * position) * -math.log(sims[k])
        return total / (n * (n - 1))

    push = sum(-math.log(1 - sim(bg[i], fg[j])) for i in range(n) for j in range(n)) / n ** 2
    return pull(fg) + pull(bg) + push


def test_contrastive_loss_matches_the_pairwise_formula() -> None:
    rng = np.random.default_rng(0)
    features = rng.uniform(0.0, 1.0, size=(4, 3, 2, 3)).astype(np.float64)
    probability = rng.uniform(0.05, 0.95, size=(4, 1, 2, 3)).astype(np.float64)
    loss, parts = contrastive_loss(torch.from_numpy(features), torch.from_numpy(probability), 0.25)
    assert float(loss) == pytest.approx(_hand_loss(features, probability[:, 0], 0.25), rel=1e-9)
    assert set(parts) == {"fg_pull", "push", "bg_pull"}
    assert sum(parts.values()) == pytest.approx(float(loss))
    # α = 0: every pair weighs 1.
    flat, _ = contrastive_loss(torch.from_numpy(features), torch.from_numpy(probability), 0.0)
    assert float(flat) == pytest.approx(_hand_loss(features, probability[:, 0], 0.0), rel=1e-9)


def test_rank_weights_favour_each_rows_most_similar_images() -> None:
    similarity = torch.tensor([[1.0, 0.2, 0.9, 0.5],
                               [0.2, 1.0, 0.3, 0.3],
                               [0.9, 0.3, 1.0, 0.1],
                               [0.5, 0.3, 0.1, 1.0]])
    weights = rank_weights(similarity, alpha=0.25)
    e = math.exp(-0.25)
    expected = torch.tensor([[0, e ** 2, 1, e], [e ** 2, 0, 1, e], [1, e, 0, e ** 2], [1, e, e ** 2, 0]])
    torch.testing.assert_close(weights, expected.float())  # ties (row 1): the earlier column first


def test_polarity_fix_on_a_map_whose_border_is_foreground() -> None:
    inverted = np.ones((8, 10), np.float32)
    inverted[2:6, 3:7] = 0.0  # the object is the low part, the border reads "foreground"
    assert border_foreground_fraction(inverted) == 1.0
    assert needs_polarity_flip([border_foreground_fraction(inverted), 0.8, 0.4])
    upright = 1.0 - inverted
    assert border_foreground_fraction(upright) == 0.0 and not needs_polarity_flip([0.0, 0.3])
    half = np.zeros((4, 4), np.float32)
    half[0] = 1.0  # top row only: (1 + 1/4 + 0 + 1/4) / 4
    assert border_foreground_fraction(half) == pytest.approx(0.375)
    # The flag stored in a model negates its logits; the file keeps it.
    torch.manual_seed(0)
    model = build_saliency_net("c2am", "small_resnet", 8, pretrained=False).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model.saliency_logits(x)
        model.flip_polarity = True
        torch.testing.assert_close(model.saliency_logits(x), -plain)


def test_hints_only_where_the_seed_reaches_the_threshold() -> None:
    seeds = np.zeros((2, 3, 4), np.float32)
    seeds[0, 0, :2] = [0.39, 0.40]
    seeds[1, 2, 3] = 0.95
    hints = hint_mask(seeds, 0.4)
    expected = np.zeros((3, 4), np.uint8)
    expected[0, 1] = expected[2, 3] = 1
    np.testing.assert_array_equal(hints, expected)
    assert hint_mask(np.zeros((0, 3, 4)), 0.4).sum() == 0
    logits = torch.zeros(1, 1, 3, 4, requires_grad=True)
    loss = hint_loss(logits, torch.from_numpy(hints)[None].long(), smoothing=0.1)
    assert float(loss.detach()) == pytest.approx(-(0.95 * math.log(0.5) + 0.05 * math.log(0.5)))
    loss.backward()
    grad = logits.grad[0, 0].numpy()
    assert (grad[hints == 0] == 0).all() and (grad[hints == 1] < 0).all()  # only hinted pixels move, up
    empty = hint_loss(logits, torch.zeros(1, 3, 4, dtype=torch.long))
    assert float(empty) == 0.0


def test_saliency_scores_on_a_hand_case() -> None:
    saliency = np.array([[0.9, 0.6, 0.1], [0.3, 0.8, 0.0]], np.float32)
    mask = np.array([[1, 2, 0], [0, IGNORE_LABEL, 1]], np.uint8)  # fg: (0,0), (0,1), (1,2); (1,1) ignored
    counts = SaliencyCounts.empty(2)
    counts.add(saliency, mask, [0.5, 0.2])
    # t 0.5: predicted (0,0), (0,1) → tp 2, fp 0, fn 1; t 0.2: + (1,0) → tp 2, fp 1, fn 1.
    np.testing.assert_array_equal(counts.tp, [2, 2])
    np.testing.assert_array_equal(counts.fp, [0, 1])
    np.testing.assert_array_equal(counts.fn, [1, 1])
    scores = counts.scores()
    np.testing.assert_allclose(scores["iou"], [2 / 3, 2 / 4])
    p, r = 1.0, 2 / 3
    assert scores["f_measure"][0] == pytest.approx(1.3 * p * r / (0.3 * p + r))
    assert counts.mae() == pytest.approx(np.mean([0.1, 0.4, 0.1, 0.3, 1.0]))
    assert foreground_map(np.stack([saliency, 1 - saliency])).max() == pytest.approx(1.0)


def test_pseudo_saliency_mask_thresholds_then_crf() -> None:
    image = np.full((12, 12, 3), 40, np.uint8)
    image[3:9, 3:9] = 220
    saliency = np.zeros((12, 12), np.float32)
    saliency[3:9, 3:8] = 0.5  # one column of the bright square is missed by the map
    saliency[0, 0] = 0.25  # an isolated speck on the dark background
    raw = pseudo_saliency_mask(image, saliency, 0.2, crf=None)
    assert raw[0, 0] == 1 and raw[3:9, 8].sum() == 0
    refined = pseudo_saliency_mask(image, saliency, 0.2)
    assert refined[3:9, 3:9].all() and refined.sum() == 36  # the CRF follows the image's edges


def test_gradient_accumulation_takes_the_steps_of_the_larger_batch(tmp_path: Path) -> None:
    """Batch 2 × 2 accumulation = batch 4 (a BatchNorm-free model with a mean loss)."""
    def run(batch: int, accumulation: int) -> tuple[nn.Module, object]:
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(b: tuple[torch.Tensor, torch.Tensor], s: int) -> tuple[torch.Tensor, dict[str, float]]:
            return (model(b[0]).squeeze(1) - b[1]).pow(2).mean(), {}

        plan = LoopSettings(name="acc", epochs=3, batch_size=batch, seed=1, device=torch.device("cpu"),
                            settings={"a": accumulation}, accumulation_steps=accumulation)
        return model, train(Trainee(model, optimizer, [0.1], Points(), step), plan)  # 12 points

    large, large_result = run(4, 1)
    small, small_result = run(2, 2)
    assert [r["step"] for r in large_result.history] == [r["step"] for r in small_result.history] == [3, 6, 9]
    for a, b in zip(large.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Steps on a small dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saliency")
    manifest_csv, manifest = make_shapes_dataset(root / "ds", count=6)
    # Seeds: the ground-truth objects at 0.9 with a faint (0.2) halo, one map per label class.
    with MapWriter(root / "seeds.h5", stage="seeds", method="cam", params={}, dataset="shapes") as writer:
        for record in manifest.records:
            mask = read_label_mask(record.mask_path)
            cams = np.stack([np.where(mask == c + 1, 0.9, 0.2) for c in record.labels]).astype(np.float32)
            stride4 = cams[:, ::4, ::4]
            writer.write(record.image_id, {"cam": cams, "cam_stride4": stride4,
                                           "keys": np.asarray(record.labels)}, {})
        writer.finish(manifest.ids)
    return {"root": root, "manifest": manifest_csv, "seeds": root / "seeds.h5"}


def _train(shapes: dict[str, Path], out: Path, method: str, *extra: str) -> list[str]:
    return ["--method", method, "--manifest", str(shapes["manifest"]), "--out", str(out / "model.pt"),
            "--metrics", str(out / "metrics.csv"), "--checkpoint-dir", str(out / "ckpt"),
            "--backbone", "small_resnet", "--no-pretrained", "--output-stride", "8", "--epochs", "2",
            "--batch-size", "3", "--accumulation-steps", "2", "--lr", "0.01", "--resize-long", "32", "40",
            "--crop", "32", "--width", "16", "--threads", "1", "--device", "cpu", *extra]


def _rows(path: Path) -> dict[str, float]:
    with path.open() as handle:
        return {row["metric"]: float(row["value"]) for row in csv.DictReader(handle)}


def test_c2am_h_maps_scores_and_seeds_with_a_saliency_background(shapes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "c2am_h"
    args = _train(shapes, out, "c2am_h", "--hints", str(shapes["seeds"]))
    assert train_saliency.main([*args, "--stop-after-epochs", "1"]) == 0 and not (out / "model.pt").exists()
    assert train_saliency.main(args) == 0  # resumed
    with (out / "metrics.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in history] == [1, 2] and all(float(r["hint"]) > 0 for r in history)
    model, meta = load_saliency(out / "model.pt")
    assert meta["method"] == "c2am_h" and meta["training"]["hints"] and "border_foreground_fraction" in meta
    assert model.flip_polarity == (meta["border_foreground_fraction"] > 0.5)

    maps = tmp_path / "saliency.h5"
    assert saliency_maps.main(["--model", str(out / "model.pt"), "--manifest", str(shapes["manifest"]),
                               "--out", str(maps), "--scales", "1.0", "0.5", "--threads", "1"]) == 0
    with MapReader(maps) as reader:
        data = reader.read("img0")
        assert data["saliency"].shape == (32, 32) and data["saliency"].dtype == np.float16
        assert 0.0 <= float(data["saliency"].min()) and float(data["saliency"].max()) == pytest.approx(1.0, abs=1e-3)
        assert set(np.unique(data["saliency_mask"])) <= {0, 1}

    rows = tmp_path / "rows.csv"
    assert evaluate_saliency.main(["--manifest", str(shapes["manifest"]), "--maps", str(maps),
                                   "--curve", str(tmp_path / "curve.csv"), "--summary", str(rows),
                                   "--method", "c2am_h"]) == 0
    scores = _rows(rows)
    assert {"fg_iou", "best_threshold", "max_f_measure", "mae", "mask_fg_iou"} <= scores.keys()
    assert 0.0 <= scores["fg_iou"] <= 1.0 and 0.0 <= scores["mae"] <= 1.0
    # The hint seeds' own foreground: the object at 0.9 over a 0.2 halo is exact above 0.2.
    seed_rows = tmp_path / "seed_rows.csv"
    assert evaluate_saliency.main(["--manifest", str(shapes["manifest"]), "--maps", str(shapes["seeds"]),
                                   "--map-name", "cam", "--curve", str(tmp_path / "c.csv"),
                                   "--summary", str(seed_rows), "--method", "hints"]) == 0
    assert _rows(seed_rows)["fg_iou"] == pytest.approx(1.0)

    combined = tmp_path / "seeds_sal.h5"
    assert saliency_seeds.main(["--manifest", str(shapes["manifest"]), "--seeds", str(shapes["seeds"]),
                                "--saliency", str(maps), "--out", str(combined), "--method", "cam_sal"]) == 0
    with MapReader(combined) as reader, MapReader(shapes["seeds"]) as seeds:
        np.testing.assert_array_equal(reader.read("img2")["cam"], seeds.read("img2")["cam"])
        with MapReader(maps) as source:  # by default the pseudo-saliency mask is the saliency
            np.testing.assert_array_equal(reader.read("img2")["saliency"], source.read("img2")["saliency_mask"])


def test_saliency_background_scores_cell_by_cell(shapes: dict[str, Path], tmp_path: Path) -> None:
    """Seeds 0.9 on the objects and 0.2 elsewhere; saliency 1 on the objects and 0.75 elsewhere:
    the background score 1 − saliency is 0 on the objects (the class wins) and 0.25 elsewhere
    (above the 0.2 halo: background), so the labels are exactly the ground truth."""
    from wsss_steps.data.manifest import read_manifest

    manifest = read_manifest(shapes["manifest"])
    sal_path = tmp_path / "sal.h5"
    with MapWriter(sal_path, stage="saliency", method="hand", params={}, dataset="shapes") as writer:
        for record in manifest.records:
            mask = read_label_mask(record.mask_path)
            writer.write(record.image_id, {"saliency": np.where(mask > 0, 1.0, 0.75).astype(np.float16)}, {})
        writer.finish(manifest.ids)
    combined = tmp_path / "combined.h5"
    assert saliency_seeds.main(["--manifest", str(shapes["manifest"]), "--seeds", str(shapes["seeds"]),
                                "--saliency", str(sal_path), "--saliency-map", "saliency", "--out", str(combined),
                                "--method", "cam_sal"]) == 0
    rows = tmp_path / "rows.csv"
    assert evaluate_masks.main(["--manifest", str(shapes["manifest"]), "--maps", str(combined), "--saliency-background",
                          "--curve", str(tmp_path / "curve.csv"), "--per-class", str(tmp_path / "pc.csv"),
                          "--summary", str(rows), "--stage", "seeds"]) == 0
    scores = _rows(rows)
    assert scores["miou"] == pytest.approx(1.0) and "best_threshold" not in scores
    # Without the saliency file's background the same seeds at threshold 0.1 label the halo.
    plain = tmp_path / "plain.csv"
    assert evaluate_masks.main(["--manifest", str(shapes["manifest"]), "--maps", str(shapes["seeds"]),
                          "--thresholds", "0.1", "0.1", "1", "--curve", str(tmp_path / "c2.csv"),
                          "--per-class", str(tmp_path / "pc2.csv"), "--summary", str(plain)]) == 0
    assert _rows(plain)["miou"] < 0.6
    with pytest.raises(Exception, match="no dataset 'saliency'"):
        evaluate_masks.main(["--manifest", str(shapes["manifest"]), "--maps", str(shapes["seeds"]),
                       "--saliency-background", "--curve", str(tmp_path / "c3.csv"), "--per-class",
                       str(tmp_path / "pc3.csv"), "--summary", str(tmp_path / "r3.csv")])


def test_refined_network_trains_on_pseudo_saliency_masks(shapes: dict[str, Path], tmp_path: Path) -> None:
    from wsss_steps.data.manifest import read_manifest

    manifest = read_manifest(shapes["manifest"])
    masks = tmp_path / "source.h5"
    with MapWriter(masks, stage="saliency", method="c2am_h", params={}, dataset="shapes") as writer:
        for record in manifest.records:
            mask = read_label_mask(record.mask_path)
            writer.write(record.image_id, {"saliency": (mask > 0).astype(np.float16),
                                           "saliency_mask": (mask > 0).astype(np.uint8)}, {})
        writer.finish(manifest.ids)
    out = tmp_path / "refined"
    assert train_saliency.main(_train(shapes, out, "refined", "--masks", str(masks), "--epochs", "3",
                                      "--lr", "0.05", "--momentum", "0.9")) == 0
    with (out / "metrics.csv").open() as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    assert losses[-1] < losses[0]
    model, meta = load_saliency(out / "model.pt")
    assert meta["head"] == "deeplabv3plus" and not model.flip_polarity
    with pytest.raises(SystemExit, match="needs --masks"):
        train_saliency.main(_train(shapes, tmp_path / "x", "refined"))
    with pytest.raises(SystemExit, match="needs --hints"):
        train_saliency.main(_train(shapes, tmp_path / "x", "c2am_h"))


def test_saliency_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_saliency_net("c2am", "small_resnet", 8, head_kernel=1, pretrained=False).eval()
    model.flip_polarity = True
    save_saliency(tmp_path / "s.pt", model, {"method": "c2am"})
    loaded, meta = load_saliency(tmp_path / "s.pt")
    assert meta["head_kernel"] == 1 and loaded.flip_polarity
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.saliency_logits(x), model.saliency_logits(x))
    torch.save({"format": "other"}, tmp_path / "o.pt")
    with pytest.raises(ValueError, match="not a saliency network file"):
        load_saliency(tmp_path / "o.pt")
