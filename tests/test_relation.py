"""Inter-pixel relation network: pair geometry, affinities, loss masks, training and resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_steps import train_relation
from wsss_steps.data.adapters import VocLayoutDataset
from wsss_steps.data.images import IGNORE_LABEL, write_image, write_label_mask
from wsss_steps.data.manifest import Manifest, write_manifest
from wsss_steps.data.manifest_builder import build_manifest
from wsss_steps.networks.backbones import build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.io import save_classifier
from wsss_steps.networks.relation import (
    RelationNet,
    affinity_loss,
    boundary_map,
    boundary_to_affinity,
    destination_valid,
    direction_path,
    load_relation,
    pair_labels,
    path_index,
    save_relation,
    search_directions,
)
from wsss_steps.store.maps import MapWriter


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two shared cores: more torch threads only oversubscribe them.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("radius", "count"), [(5, 34), (10, 152)])
def test_directions_cover_the_disc_once(radius: int, count: int) -> None:
    directions = search_directions(radius)
    assert len(directions) == count
    both = {tuple(d) for d in directions} | {(-dy, -dx) for dy, dx in directions}
    disc = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if 0 < dy * dy + dx * dx < radius * radius}
    assert both == disc and len(both) == 2 * count


def test_paths_run_from_the_far_end_to_the_source_near_the_line() -> None:
    for dy, dx in search_directions(10):
        path = direction_path(int(dy), int(dx))
        assert tuple(path[0]) == (dy, dx) and tuple(path[-1]) == (0, 0)
        distance = np.abs(dy * path[:, 1] - dx * path[:, 0]) / np.hypot(dy, dx)
        assert (distance < 1).all() and len({tuple(p) for p in path}) == len(path)
    np.testing.assert_array_equal(direction_path(0, 3), [[0, 3], [0, 2], [0, 1], [0, 0]])


def _brute_affinity(boundary: np.ndarray, radius: int) -> np.ndarray:
    height, width = boundary.shape
    directions = search_directions(radius)
    out = np.zeros((len(directions), height, width))
    for d, (dy, dx) in enumerate(directions):
        path = direction_path(int(dy), int(dx))
        for y in range(height):
            for x in range(width):
                if y + dy < height and 0 <= x + dx < width:
                    out[d, y, x] = 1 - max(boundary[y + py, x + px] for py, px in path)
    return out


def test_affinity_is_one_minus_the_max_on_the_segment() -> None:
    boundary = np.zeros((9, 12))
    boundary[:, 6] = 1.0  # a wall: pairs across it have affinity 0, others 1
    boundary[2, 2] = 0.3
    index = path_index(4)
    affinity = boundary_to_affinity(torch.from_numpy(boundary)[None], index)[0].numpy()
    valid = destination_valid(9, 12, index).numpy()
    expected = _brute_affinity(boundary, 4)
    np.testing.assert_allclose(affinity[valid], expected[valid], atol=1e-12)
    assert (affinity[~valid] == 0).all()
    right = index.directions.tolist().index([0, 3])
    np.testing.assert_array_equal(affinity[right, 4, :9], [1, 1, 1, 0, 0, 0, 0, 1, 1])
    assert affinity[right, 2, 0] == pytest.approx(0.7)  # crosses the 0.3 pixel


def test_pair_labels_and_loss_ignore_255_and_the_outside() -> None:
    labels = torch.zeros(1, 6, 8, dtype=torch.long)
    labels[:, :, 5:] = 2
    labels[:, 0, 0] = IGNORE_LABEL
    index = path_index(3)
    bg, fg, neg = pair_labels(labels, index)
    right = index.directions.tolist().index([0, 2])
    np.testing.assert_array_equal(bg[0, right, 0].numpy(), [0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(fg[0, right, 0].numpy(), [0, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(neg[0, right, 0].numpy(), [0, 0, 0, 1, 1, 0, 0, 0])
    assert not (bg | fg | neg)[0, :, 0, 0].any()  # the 255 pixel pairs with nothing
    assert not (bg | fg | neg)[0][~destination_valid(6, 8, index)].any()

    affinity = torch.rand(1, index.num_directions, 6, 8, dtype=torch.float64, requires_grad=True)
    loss, parts = affinity_loss(affinity, labels, index)
    loss.backward()
    ignored = ~(bg | fg | neg)
    assert (affinity.grad[ignored] == 0).all() and (affinity.grad[~ignored] != 0).all()
    a = affinity.detach()
    eps = 1e-5
    by_hand = ((-torch.log(a[bg] + eps)).mean() / 2 + (-torch.log(a[fg] + eps)).mean() / 2
               + (-torch.log(1 + eps - a[neg])).mean()) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-4)
    assert parts["neg_pairs"] == int(neg.sum())


def _relation_model() -> RelationNet:
    torch.manual_seed(0)
    classifier = CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), num_classes=2)
    return RelationNet(classifier.eval().backbone)


def test_network_shapes_frozen_backbone_and_round_trip(tmp_path: Path) -> None:
    model = _relation_model()
    logits = model(torch.randn(2, 3, 37, 50))
    assert logits.shape == (2, 1, 10, 13)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert not model.backbone.training and model.head.training
    stats = model.backbone.stem[1].running_mean.clone()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    torch.testing.assert_close(model.backbone.stem[1].running_mean, stats)
    save_relation(tmp_path / "relation.pt", model, {"class_names": ["a", "b"]})
    loaded, meta = load_relation(tmp_path / "relation.pt")
    assert meta["stages"] == [0, 1, 2, 3, 4] and meta["backbone"] == "small_resnet"
    image = torch.randn(1, 3, 37, 50)
    torch.testing.assert_close(boundary_map(loaded, image), boundary_map(model.eval(), image))
    mirrored = boundary_map(loaded, image.flip(-1))
    assert boundary_map(loaded, image).shape == (10, 13) and mirrored.shape == (10, 13)


SIZE = 32


def make_shapes_dataset(root: Path, count: int = 6, size: int = SIZE, half: int = 6, val_count: int = 0,
                        seed: int = 0) -> tuple[Path, Manifest]:
    """Small images with a red square (class 0) and/or a blue disc (class 1) of half-width ``half``;
    masks as labels, boxes.csv from the masks; the last ``val_count`` images form the val split."""
    rng = np.random.default_rng(seed)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "classes.txt").write_text("square\ndisc\n")
    rows, box_rows, ids = ["image_id,labels"], ["image_id,class,x_min,y_min,x_max,y_max"], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        image = rng.integers(90, 170, size=(size, size, 3)).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        classes = [[0], [1], [0, 1]][i % 3]
        image_id = f"img{i}"
        for c in classes:
            cy, cx = rng.integers(half + 2, size - half - 2, size=2)
            region = ((abs(yy - cy) <= half) & (abs(xx - cx) <= half) if c == 0
                      else (yy - cy) ** 2 + (xx - cx) ** 2 <= half ** 2)
            image[region] = (220, 30, 30) if c == 0 else (30, 40, 220)
            mask[region] = c + 1
            ys, xs = np.nonzero(region)
            box_rows.append(f"{image_id},{['square', 'disc'][c]},{xs.min()},{ys.min()},{xs.max()},{ys.max()}")
        write_image(root / "JPEGImages" / f"{image_id}.jpg", image)
        write_label_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        rows.append(f"{image_id},{' '.join(['square', 'disc'][c] for c in classes)}")
        ids.append(image_id)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "boxes.csv").write_text("\n".join(box_rows) + "\n")
    splits = root / "ImageSets" / "Segmentation"
    (splits / "train.txt").write_text("\n".join(ids[:count - val_count]) + "\n")
    if val_count:
        (splits / "val.txt").write_text("\n".join(ids[count - val_count:]) + "\n")
    manifest = build_manifest(VocLayoutDataset(root, name="shapes"), "train", require_masks=True)
    return write_manifest(manifest, root / "manifest"), manifest


def write_mask_labels(path: Path, manifest: Manifest) -> None:
    """Affinity labels from the ground truth, with a 255 ring where two labels meet."""
    from wsss_steps.data.images import read_label_mask

    with MapWriter(path, stage="affinity_labels", method="gt", params={}, dataset=manifest.dataset) as writer:
        for record in manifest.records:
            mask = read_label_mask(record.mask_path)
            edge = np.zeros_like(mask, bool)
            edge[:-1] |= mask[:-1] != mask[1:]
            edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
            mask = mask.copy()
            mask[edge] = IGNORE_LABEL
            writer.write(record.image_id, {"affinity_label": mask, "keys": np.asarray(record.labels)},
                         {"height": record.height, "width": record.width})
        writer.finish(manifest.ids)


@pytest.fixture(scope="module")
def training_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("relation")
    manifest_csv, manifest = make_shapes_dataset(root / "ds")
    write_mask_labels(root / "labels.h5", manifest)
    torch.manual_seed(0)
    classifier = CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), num_classes=2)
    save_classifier(root / "classifier.pt", classifier.eval(), {"class_names": ["square", "disc"]})
    return {"root": root, "manifest": manifest_csv, "labels": root / "labels.h5",
            "classifier": root / "classifier.pt"}


def _train_args(inputs: dict[str, Path], out_dir: Path, *extra: str) -> list[str]:
    return ["--classifier", str(inputs["classifier"]), "--labels", str(inputs["labels"]),
            "--manifest", str(inputs["manifest"]), "--out", str(out_dir / "relation.pt"),
            "--metrics", str(out_dir / "metrics.csv"), "--checkpoint-dir", str(out_dir / "ckpt"),
            "--epochs", "3", "--batch-size", "2", "--crop", "32", "--radius", "5", "--lr", "0.1",
            "--seed", "1", "--threads", "1", "--device", "cpu", "--backbone", "classifier", *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_training_learns_resumes_to_identical_weights_and_is_deterministic(
        training_inputs: dict[str, Path], tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    assert train_relation.main(_train_args(training_inputs, straight)) == 0
    rows = (straight / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,step,lr,loss")
    losses = [float(r.split(",")[3]) for r in rows[1:]]
    assert losses[-1] < losses[0]

    resumed = tmp_path / "resumed"
    assert train_relation.main(_train_args(training_inputs, resumed, "--stop-after-epochs", "1")) == 0
    assert not (resumed / "relation.pt").exists() and (resumed / "ckpt" / "last.pt").exists()
    assert train_relation.main(_train_args(training_inputs, resumed)) == 0
    a, b = _weights(straight / "relation.pt"), _weights(resumed / "relation.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The backbone is the classifier's, untouched.
    classifier = torch.load(training_inputs["classifier"], weights_only=True)["state_dict"]
    for key, value in classifier.items():
        if key.startswith("backbone."):
            assert torch.equal(a[key], value), key

    # Other settings: the checkpoint is not reused, training starts over.
    other = _train_args(training_inputs, resumed, "--lr", "0.05")
    assert train_relation.main(other) == 0
    assert not torch.equal(_weights(resumed / "relation.pt")["head.weight"], a["head.weight"])


def test_imagenet_backbone_stays_frozen_and_the_file_stands_alone(
        training_inputs: dict[str, Path], tmp_path: Path) -> None:
    """IRN's design: the boundary branch reads frozen ImageNet features, not the classifier's."""
    args = _train_args(training_inputs, tmp_path, "--backbone", "efficientnet_lite0", "--epochs", "1")
    assert train_relation.main(args) == 0
    saved = _weights(tmp_path / "relation.pt")
    imagenet = build_backbone("efficientnet_lite0", None, 16, pretrained=True).state_dict()
    for key, value in imagenet.items():
        assert torch.equal(saved[f"backbone.{key}"], value), key
    model, meta = load_relation(tmp_path / "relation.pt")
    assert (meta["backbone"], meta["output_stride"]) == ("efficientnet_lite0", 16)
    assert meta["training"]["backbone"].startswith("efficientnet_lite0/os16/")
    image = torch.randn(1, 3, 40, 52)
    assert model(image).shape == (1, 1, 10, 13)
    # No classifier needed for an ImageNet backbone; the classifier's own one needs it.
    no_classifier = args[2:] + ["--out", str(tmp_path / "again.pt"), "--checkpoint-dir", str(tmp_path / "c2")]
    assert train_relation.main(no_classifier) == 0
    assert torch.equal(_weights(tmp_path / "again.pt")["head.weight"], saved["head.weight"])
    with pytest.raises(SystemExit, match="--backbone classifier needs --classifier"):
        train_relation.main([*args[2:], "--backbone", "classifier"])
