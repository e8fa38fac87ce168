"""The sparse random walk equals IRN's dense one, stays in bounded memory, respects boundaries;
the random-walk and pseudo-mask steps write what evaluate_seeds reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_steps import pseudo_masks, random_walk
from wsss_steps.data.images import read_label_mask
from wsss_steps.data.manifest import read_manifest
from wsss_steps.evaluation.masks import evaluate_seeds
from wsss_steps.evaluation.metrics import precision_per_class, recall_per_class
from wsss_steps.methods.labels import labels_at_threshold
from wsss_steps.methods.random_walk import (
    dense_random_walk,
    ground_truth_boundary,
    transition_matrix,
    upsample_normalize,
)
from wsss_steps.methods.random_walk import random_walk as walk_seeds
from wsss_steps.networks.backbones import build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.relation import RelationNet, save_relation
from wsss_steps.store.maps import MapReader

from .test_affinity_labels import write_seed_file
from .test_relation import make_shapes_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("height", "width", "radius", "beta", "exp_times"),
                         [(12, 15, 5, 10.0, 8), (9, 7, 3, 2.0, 4), (16, 11, 5, 10.0, 3), (1, 9, 5, 10.0, 8)])
def test_sparse_walk_equals_the_dense_matrix_power(height: int, width: int, radius: int, beta: float,
                                                   exp_times: int) -> None:
    generator = torch.Generator().manual_seed(height * width)
    boundary = torch.rand(height, width, generator=generator, dtype=torch.float64) ** 3
    seeds = torch.rand(3, height, width, generator=generator, dtype=torch.float64)
    sparse = walk_seeds(seeds, boundary, radius, beta, exp_times)
    dense = dense_random_walk(seeds, boundary, radius, beta, exp_times)
    assert sparse.shape == (3, height, width)
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=0, atol=1e-5 * float(dense.max()))
    assert (sparse - dense).abs().max() < 1e-10  # float64: rounding only


def test_transition_rows_are_stochastic_and_the_affinities_symmetric() -> None:
    boundary = torch.rand(10, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    matrix = transition_matrix(boundary, radius=5, beta=10).to_dense()
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(130, dtype=torch.float64))
    degree = 1 / torch.diagonal(matrix)  # P = D⁻¹A and A_ii = 1, so D_ii = 1 / P_ii
    affinity = matrix * degree[:, None]
    torch.testing.assert_close(affinity, affinity.T)
    assert int((matrix[0] > 0).sum()) <= 69 and int((matrix[5 * 13 + 6] > 0).sum()) == 69


def test_walk_spreads_a_seed_inside_its_region_and_not_across_a_boundary() -> None:
    boundary = torch.zeros(12, 20, dtype=torch.float64)
    boundary[:, 9] = 1.0  # a wall
    seeds = torch.zeros(1, 12, 20, dtype=torch.float64)
    seeds[0, 5, 3] = 1.0
    walked = walk_seeds(seeds, boundary)[0]
    left, right = walked[:, :9], walked[:, 10:]
    assert (right == 0).all() and (walked[:, 9] == 0).all()
    assert (left > 0).all()
    assert float(left.max() / left.min()) < 1.05  # 256 steps mix the region almost evenly
    assert float(left.sum()) == pytest.approx(float(left.numel() * left.mean()))


def test_memory_stays_bounded_on_a_500_by_375_image() -> None:
    """The walk of a 500 × 375 image (94 × 125 at stride 4) in a fresh process: its peak RSS
    grows by far less than the dense transition matrix alone (N² float64 = 1.1 GB)."""
    code = textwrap.dedent("""
        import json, resource, torch
        torch.set_num_threads(1)
        from wsss_steps.random_walk import propagate_seeds
        g = torch.Generator().manual_seed(0)
        boundary = torch.rand(94, 125, generator=g, dtype=torch.float64) ** 4
        seeds = torch.rand(3, 94, 125, generator=g).numpy()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = propagate_seeds(seeds, boundary, 375, 500)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"shape": list(out.shape), "growth_mb": (after - before) / 1024}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [3, 375, 500]
    dense_mb = (94 * 125) ** 2 * 8 / 2**20
    assert report["growth_mb"] < 250 < dense_mb


def test_upsampling_normalisation_and_labels() -> None:
    scores = torch.zeros(2, 3, 4, dtype=torch.float64)
    scores[0, 0, 0] = 2.0
    scores[1, 1:3, 2:4] = 1.0
    up = upsample_normalize(scores, 10, 13)
    assert up.shape == (2, 10, 13) and float(up.max()) == pytest.approx(1.0)
    assert float(up[1].max()) == pytest.approx(0.5)  # one max over all classes (IRN)
    labels = labels_at_threshold(up.numpy(), np.array([4, 1]), 0.25)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 5, 2}
    assert labels[0, 0] == 5 and labels[6, 11] == 2 and labels[9, 0] == 0
    ties = labels_at_threshold(np.full((1, 2, 2), 0.25), np.array([0]), 0.25)
    np.testing.assert_array_equal(ties, 0)


def test_ground_truth_boundary_marks_label_changes_and_void_cells() -> None:
    mask = np.zeros((18, 22), np.uint8)
    mask[:, 11:] = 2
    mask[2:6, 2:6] = 255
    boundary = ground_truth_boundary(mask, (5, 6)).numpy()
    assert boundary.shape == (5, 6) and set(np.unique(boundary)) == {0.0, 1.0}
    # Cells 0 (void) and 2 (columns 8-11: the 0|2 step between columns 10 and 11) only.
    expected = np.zeros((5, 6))
    expected[:2, :2] = 1
    expected[:, 2] = 1
    np.testing.assert_array_equal(boundary, expected)
    # On it, a seed in the left region spreads over the left region and never crosses.
    seeds = torch.zeros(1, 5, 6, dtype=torch.float64)
    seeds[0, 4, 0] = 1.0
    walked = walk_seeds(seeds, torch.as_tensor(boundary, dtype=torch.float64), exp_times=6)[0]
    assert float(walked[:, 3:].abs().max()) == 0.0 and float(walked[2:, :2].min()) > 0


@pytest.fixture(scope="module")
def walk_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("walk")
    manifest_csv, manifest = make_shapes_dataset(root / "ds", count=4)

    def seeds_from_masks(record):  # seeds: the ground truth of each label class, shrunk
        mask = read_label_mask(record.mask_path)
        return np.stack([(mask == k + 1) * 0.9 for k in record.labels]).astype(np.float32)

    write_seed_file(root / "seeds.h5", manifest, seeds_from_masks)
    torch.manual_seed(0)
    classifier = CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), num_classes=2)
    save_relation(root / "relation.pt", RelationNet(classifier.eval().backbone),
                  {"class_names": list(manifest.class_names), "settings_hash": "test"})
    return {"root": root, "manifest": manifest_csv, "seeds": root / "seeds.h5", "relation": root / "relation.pt"}


def test_walk_and_pseudo_mask_steps_feed_the_evaluation(walk_inputs: dict[str, Path]) -> None:
    root = walk_inputs["root"]
    walk = root / "rw.h5"
    assert random_walk.main(["--relation", str(walk_inputs["relation"]), "--seeds", str(walk_inputs["seeds"]),
                             "--manifest", str(walk_inputs["manifest"]), "--out", str(walk), "--device", "cpu",
                             "--exp-times", "4", "--sem-seg-bg-thres", "0.3"]) == 0
    manifest = read_manifest(walk_inputs["manifest"])
    with MapReader(walk) as reader:
        assert reader.attrs["stage"] == "random_walk" and reader.params["sem_seg_bg_thres"] == 0.3
        for record in manifest.records:
            data = reader.read(record.image_id)
            assert data["cam"].shape == (len(record.labels), 32, 32) and data["cam"].dtype == np.float16
            assert data["boundary"].shape == (8, 8)
            assert float(data["cam"].max()) == pytest.approx(1.0, abs=1e-3)
            np.testing.assert_array_equal(
                data["pseudo_label"], labels_at_threshold(data["cam"].astype(np.float32), data["keys"], 0.3))

    masks = root / "masks.h5"
    png = root / "png"
    assert pseudo_masks.main(["--maps", str(walk), "--manifest", str(walk_inputs["manifest"]), "--out", str(masks),
                              "--crf", "--export-png", str(png)]) == 0
    plain = root / "plain.h5"
    assert pseudo_masks.main(["--maps", str(walk), "--manifest", str(walk_inputs["manifest"]),
                              "--out", str(plain)]) == 0
    with MapReader(masks) as crf_reader, MapReader(walk) as walk_reader, MapReader(plain) as plain_reader:
        assert crf_reader.params["crf"]["iterations"] == 1 and crf_reader.params["crf"]["gt_prob"] == 0.9
        assert crf_reader.params["threshold"] == 0.3
        for record in manifest.records:
            data = crf_reader.read(record.image_id)
            np.testing.assert_array_equal(read_label_mask(png / f"{record.image_id}.png"), data["mask"])
            np.testing.assert_array_equal(data["mask_onehot"].argmax(0)[data["mask"] > 0] + 0,
                                          np.searchsorted(data["keys"] + 1, data["mask"][data["mask"] > 0]))
            np.testing.assert_array_equal(plain_reader.read(record.image_id)["mask"],
                                          walk_reader.read(record.image_id)["pseudo_label"])

    # The sweep over the walk's scores at 0.3 and the fixed masks without CRF agree.
    thresholds = [0.3]
    sweep = evaluate_seeds(manifest, walk, "cam", thresholds)
    fixed = evaluate_seeds(manifest, plain, "mask_onehot", thresholds)
    np.testing.assert_array_equal(sweep, fixed)


def test_ground_truth_boundary_walk_is_a_diagnostic_without_a_relation_network(walk_inputs: dict[str, Path]) -> None:
    root = walk_inputs["root"]
    walk = root / "rw_gt.h5"
    common = ["--seeds", str(walk_inputs["seeds"]), "--manifest", str(walk_inputs["manifest"]), "--device", "cpu",
              "--exp-times", "4"]
    with pytest.raises(SystemExit, match="--relation"):
        random_walk.main([*common, "--out", str(walk)])
    with pytest.raises(SystemExit, match="--relation"):
        random_walk.main([*common, "--out", str(walk), "--boundary", "ground-truth",
                          "--relation", str(walk_inputs["relation"])])
    assert not walk.exists()
    assert random_walk.main([*common, "--out", str(walk), "--boundary", "ground-truth"]) == 0
    manifest = read_manifest(walk_inputs["manifest"])
    with MapReader(walk) as reader:
        assert reader.params["boundary"] == "ground-truth" and reader.params["relation"] == "ground-truth"
        for record in manifest.records:
            data = reader.read(record.image_id)
            gt = read_label_mask(record.mask_path)
            np.testing.assert_array_equal(
                data["boundary"], ground_truth_boundary(gt, data["boundary"].shape).numpy().astype(np.float16))
    # Seeds on the objects, perfect boundaries: nothing leaks into the background (the objects here
    # are 3×3 cells, most of them boundary cells where IRN's walk zeroes the seeds: recall is low).
    confusion = evaluate_seeds(manifest, walk, "cam", [0.25])[0]
    assert precision_per_class(confusion)[1:].min() > 0.95 and recall_per_class(confusion)[1:].min() > 0.3
