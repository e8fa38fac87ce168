"""Segmentation network (docs/methods.md §6): heads, files, classifier init, training with resume,
multi-scale + flip inference, label-map evaluation, PNG export and the report figures."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_relation import make_shapes_dataset, one_thread  # noqa: F401 (autouse fixture)
from wsss_steps import evaluate_masks, export_png, report_figures, segment, train_segmentation
from wsss_steps.data.images import IGNORE_LABEL, read_label_mask, voc_palette
from wsss_steps.data.manifest import read_manifest, spread_ids
from wsss_steps.evaluation.masks import EvaluationError, evaluate_label_maps
from wsss_steps.methods.segmentation import predict_probs
from wsss_steps.networks.backbones import build_backbone
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.io import save_classifier
from wsss_steps.networks.segmentation import (
    DeepLabV2Head,
    build_segmentation_net,
    init_backbone_from_classifier,
    load_segmentation,
    low_level_stage_index,
    save_segmentation,
)
from wsss_steps.report.figures import render_gallery, render_table, stage_table
from wsss_steps.store.maps import MapReader, MapWriter
from wsss_steps.train_segmentation import class_balanced_weights
from wsss_steps.training.segmentation import MaskError, MaskSource


@pytest.mark.parametrize("head, rates", [("deeplabv2", (6, 12, 18, 24)), ("deeplabv3plus", (2, 4))])
def test_heads_give_logits_at_the_input_size(head: str, rates: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_segmentation_net(head, "small_resnet", 5, 8, rates, width=16).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 40, 56))
    assert logits.shape == (2, 5, 40, 56)
    assert model.rates == rates
    if head == "deeplabv2":
        assert isinstance(model.head, DeepLabV2Head) and len(model.head.branches) == 4
        assert [b.dilation for b in model.head.branches] == [(r, r) for r in rates]
    else:  # the decoder reads small_resnet's layer1, the last stage at stride 4
        assert model.head.low_level_stage == low_level_stage_index(model.backbone) == 1
    backbone, head_params = model.parameter_groups()
    assert len(backbone) + len(head_params) == len(list(model.parameters()))


def test_deeplabv2_sums_its_branches() -> None:
    torch.manual_seed(0)
    head = DeepLabV2Head(8, 3, (1, 2))
    features = torch.randn(1, 8, 10, 10)
    expected = head.branches[0](features) + head.branches[1](features)
    assert torch.allclose(head([features]), expected)


def test_file_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_segmentation_net("deeplabv3plus", "small_resnet", 3, 8, (2, 4), width=16).eval()
    save_segmentation(tmp_path / "seg.pt", model, {"class_names": ["a", "b"]})
    loaded, meta = load_segmentation(tmp_path / "seg.pt")
    assert meta["head"] == "deeplabv3plus" and meta["rates"] == [2, 4] and meta["num_labels"] == 3
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    torch.save({"format": "something/else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a segmentation network file"):
        load_segmentation(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="segmentation network file not found"):
        load_segmentation(tmp_path / "missing.pt")


def test_backbone_starts_from_the_classifier(tmp_path: Path) -> None:
    torch.manual_seed(1)
    classifier = CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), 2)
    save_classifier(tmp_path / "cls.pt", classifier.eval(), {"class_names": ["a", "b"]})
    torch.manual_seed(2)
    model = build_segmentation_net("deeplabv2", "small_resnet", 3, 8, (1, 2))
    meta = init_backbone_from_classifier(model, tmp_path / "cls.pt")
    assert meta["class_names"] == ["a", "b"]
    for key, value in classifier.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    other = build_segmentation_net("deeplabv2", "small_resnet", 3, 16, (1, 2))
    with pytest.raises(ValueError, match="output stride 8.*output stride 16"):
        init_backbone_from_classifier(other, tmp_path / "cls.pt")


def test_multiscale_flip_probabilities() -> None:
    torch.manual_seed(0)
    model = build_segmentation_net("deeplabv3plus", "small_resnet", 4, 8, (2,), width=16).eval()
    image = torch.randn(1, 3, 36, 44)
    probs = predict_probs(model, image, (0.75, 1.0, 1.5), flip=True)
    assert probs.shape == (4, 36, 44)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    mirrored = predict_probs(model, image.flip(-1), (0.75, 1.0, 1.5), flip=True)
    np.testing.assert_allclose(mirrored, probs[:, :, ::-1], atol=1e-5)
    single = predict_probs(model, image, (1.0,), flip=False)
    with torch.no_grad():
        expected = torch.softmax(model(image), dim=1)[0].numpy()
    np.testing.assert_allclose(single, expected, atol=1e-6)


def test_class_balanced_weights_are_median_frequency() -> None:
    weights = class_balanced_weights(np.array([0.6, 0.3, 0.1, 0.0]))
    np.testing.assert_allclose(weights, [0.5, 1.0, 3.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Steps on a small dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("segmentation")
    manifest_csv, manifest = make_shapes_dataset(root / "ds", count=6)
    # Pseudo masks: the ground truth with its first row set to 255 (ignored by the loss).
    with MapWriter(root / "masks.h5", stage="pseudo_masks", method="cam", params={}, dataset="shapes") as writer:
        for record in manifest.records:
            mask = read_label_mask(record.mask_path).copy()
            mask[0] = IGNORE_LABEL
            writer.write(record.image_id, {"mask": mask, "keys": np.asarray(record.labels)}, {})
        writer.finish(manifest.ids)
    torch.manual_seed(0)
    classifier = CamClassifier(build_backbone("small_resnet", None, 8, pretrained=False), 2)
    save_classifier(root / "classifier.pt", classifier.eval(), {"class_names": ["square", "disc"]})
    return {"root": root, "manifest": manifest_csv, "masks": root / "masks.h5", "classifier": root / "classifier.pt"}


def _train_args(inputs: dict[str, Path], out_dir: Path, *extra: str) -> list[str]:
    return ["--manifest", str(inputs["manifest"]), "--init-classifier", str(inputs["classifier"]),
            "--out", str(out_dir / "seg.pt"), "--metrics", str(out_dir / "metrics.csv"),
            "--checkpoint-dir", str(out_dir / "ckpt"), "--head", "deeplabv3plus", "--backbone", "small_resnet",
            "--aspp-rates", "2", "4", "--width", "16", "--epochs", "3", "--batch-size", "3", "--lr", "0.01",
            "--resize-long", "24", "40", "--crop", "32", "--seed", "1", "--threads", "1", "--device", "cpu",
            *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_training_learns_and_resumes_to_identical_weights(shapes: dict[str, Path], tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    assert train_segmentation.main(_train_args(shapes, straight, "--masks", str(shapes["masks"]))) == 0
    with (straight / "metrics.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    resumed = tmp_path / "resumed"
    args = _train_args(shapes, resumed, "--masks", str(shapes["masks"]))
    assert train_segmentation.main([*args, "--stop-after-epochs", "1"]) == 0
    assert not (resumed / "seg.pt").exists() and (resumed / "ckpt" / "last.pt").exists()
    assert train_segmentation.main(args) == 0
    a, b = _weights(straight / "seg.pt"), _weights(resumed / "seg.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Ground-truth masks (no 255 row) are other settings: other weights.
    full = tmp_path / "full"
    assert train_segmentation.main(_train_args(shapes, full, "--ground-truth", "--class-balanced")) == 0
    _, meta = load_segmentation(full / "seg.pt")
    assert meta["name"] == "full" and meta["training"]["masks"] == "ground_truth"
    assert not torch.equal(_weights(full / "seg.pt")["head.classifier.weight"], a["head.classifier.weight"])


def test_semi_supervised_takes_ground_truth_on_exactly_the_subset(shapes: dict[str, Path], tmp_path: Path) -> None:
    manifest = read_manifest(shapes["manifest"])
    subset = [manifest.ids[1], manifest.ids[4]]
    # The pseudo-mask file need not hold the subset's images (they never read it).
    with MapWriter(tmp_path / "pseudo.h5", stage="pseudo_masks", method="cam", params={}, dataset="shapes") as writer:
        for record in manifest.records:
            if record.image_id not in subset:
                writer.write(record.image_id, {"mask": np.full((record.height, record.width), 2, np.uint8)}, {})
        writer.finish([i for i in manifest.ids if i not in subset])
    source = MaskSource(manifest, tmp_path / "pseudo.h5", ground_truth_ids=subset)
    for index, record in enumerate(manifest.records):
        mask = source.read(index, (record.height, record.width))
        if record.image_id in subset:
            np.testing.assert_array_equal(mask, read_label_mask(record.mask_path))
        else:
            assert (mask == 2).all()
    assert (read_label_mask(manifest.records[1].mask_path) != 2).any()  # the two sources differ
    with pytest.raises(MaskError, match=r"not images of .*'nope'"):
        MaskSource(manifest, tmp_path / "pseudo.h5", ground_truth_ids=[*subset, "nope"])
    manifest.records[1] = dataclasses.replace(manifest.records[1], mask_path=None)
    with pytest.raises(MaskError, match=r"ground-truth subset: 1 image.*img1"):
        MaskSource(manifest, tmp_path / "pseudo.h5", ground_truth_ids=subset)
    # The step: the model records the subset; its identity differs from the weakly supervised one's.
    (tmp_path / "gt.txt").write_text("\n".join(subset) + "\n")
    semi, weak = tmp_path / "semi", tmp_path / "weak"
    args = ("--masks", str(shapes["masks"]), "--epochs", "1")
    assert train_segmentation.main([*_train_args(shapes, semi, *args), "--ground-truth-subset",
                                    str(tmp_path / "gt.txt")]) == 0
    assert train_segmentation.main(_train_args(shapes, weak, *args)) == 0
    _, semi_meta = load_segmentation(semi / "seg.pt")
    _, weak_meta = load_segmentation(weak / "seg.pt")
    assert semi_meta["ground_truth_ids"] == subset and weak_meta["ground_truth_ids"] == []
    assert semi_meta["training"]["ground_truth_subset"]["images"] == 2
    assert "ground_truth_subset" not in weak_meta["training"]
    (tmp_path / "bad.txt").write_text("img0\n../etc\n")
    with pytest.raises(SystemExit, match="ground-truth-subset.*invalid image id"):
        train_segmentation.main([*_train_args(shapes, tmp_path / "x", *args), "--ground-truth-subset",
                                 str(tmp_path / "bad.txt")])
    with pytest.raises(SystemExit, match="completes the pseudo masks"):
        train_segmentation.main([*_train_args(shapes, tmp_path / "y", "--ground-truth"), "--ground-truth-subset",
                                 str(tmp_path / "gt.txt")])


def test_bad_pseudo_mask_is_named(shapes: dict[str, Path], tmp_path: Path) -> None:
    manifest = read_manifest(shapes["manifest"])
    with MapWriter(tmp_path / "bad.h5", stage="pseudo_masks", method="cam", params={}, dataset="shapes") as writer:
        for record in manifest.records:
            writer.write(record.image_id, {"mask": np.full((32, 32), 7, np.uint8)}, {})
        writer.finish(manifest.ids)
    with pytest.raises(MaskError, match=r"image 'img0'.*values \[7\]"):
        train_segmentation.main(_train_args(shapes, tmp_path / "out", "--masks", str(tmp_path / "bad.h5"),
                                            "--class-balanced"))


def test_segment_evaluate_and_export(shapes: dict[str, Path], tmp_path: Path) -> None:
    assert train_segmentation.main(_train_args(shapes, tmp_path, "--ground-truth", "--epochs", "1")) == 0
    predictions = tmp_path / "pred.h5"
    assert segment.main(["--model", str(tmp_path / "seg.pt"), "--manifest", str(shapes["manifest"]),
                         "--out", str(predictions), "--scales", "0.75", "1.0", "--threads", "1",
                         "--device", "cpu"]) == 0
    manifest = read_manifest(shapes["manifest"])
    with h5py.File(predictions, "r") as handle:
        assert sorted(handle) == sorted(manifest.ids) and handle.attrs["method"] == "full"
        group = handle[manifest.ids[0]]
        assert group["mask"].shape == group["mask_crf"].shape == (32, 32)
        assert group["mask"].dtype == np.uint8 and int(group["mask"][()].max()) <= 2

    summary = tmp_path / "rows.csv"
    assert evaluate_masks.main(["--manifest", str(shapes["manifest"]), "--maps", str(predictions),
                                "--map-name", "mask_crf", "--label-map", "--per-class", str(tmp_path / "pc.csv"),
                                "--summary", str(summary), "--stage", "segmentation_crf", "--method", "full",
                                "--classifier", "cam", "--split", "val"]) == 0
    with summary.open() as handle:
        rows = {r["metric"]: r for r in csv.DictReader(handle)}
    assert "best_threshold" not in rows and rows["miou"]["stage"] == "segmentation_crf"
    assert 0 <= float(rows["miou"]["value"]) <= 1 and rows["num_images"]["value"] == "6"

    out = tmp_path / "png"
    assert export_png.main(["--maps", str(predictions), "--map-name", "mask", "--manifest",
                            str(shapes["manifest"]), "--out", str(out)]) == 0
    with Image.open(out / "img0.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image.getpalette()[:6]), voc_palette()[:2].reshape(-1))
    with h5py.File(predictions, "r") as handle:
        assert np.array_equal(read_label_mask(out / "img0.png"), handle["img0"]["mask"][()])


def test_label_map_evaluation_counts_and_errors(shapes: dict[str, Path], tmp_path: Path) -> None:
    manifest = read_manifest(shapes["manifest"])
    path = tmp_path / "labels.h5"
    with MapWriter(path, stage="segmentation", method="gt", params={}, dataset="shapes") as writer:
        for record in manifest.records:
            writer.write(record.image_id, {"mask": read_label_mask(record.mask_path)}, {})
        writer.finish(manifest.ids)
    confusion = evaluate_label_maps(manifest, path, "mask")
    assert confusion.sum() == 6 * 32 * 32 and confusion.trace() == confusion.sum()  # perfect
    manifest.records.append(manifest.records[0].__class__("ghost", manifest.records[0].image_path,
                                                          manifest.records[0].mask_path, (0,), 32, 32))
    with pytest.raises(EvaluationError, match="lacks 1 image.*ghost"):
        evaluate_label_maps(manifest, path, "mask")
    with pytest.raises(EvaluationError, match="has no dataset 'mask_crf'"):
        evaluate_label_maps(read_manifest(shapes["manifest"]), path, "mask_crf")


# ---------------------------------------------------------------------------------------------
# Report figures


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_stage_table_reports_the_share_of_full(tmp_path: Path) -> None:
    columns = ["dataset", "stage", "method", "classifier", "split", "metric", "value"]
    rows = [["d", "seeds", "cam", "cam", "train", "miou", 0.40], ["d", "seeds", "cam", "cam", "train", "best_threshold", 0.2],
            ["d", "segmentation", "cam", "cam", "val", "miou", 0.45],
            ["d", "segmentation_crf", "cam", "cam", "val", "miou", 0.50],
            ["d", "segmentation", "full", "cam", "val", "miou", 0.60],
            ["d", "segmentation_crf", "full", "cam", "val", "miou", 0.625],
            ["d", "classifier", "cam", "cam", "val", "map", 0.9]]
    summary = _write(tmp_path / "summary.csv", columns, rows)
    order, table = stage_table(list(csv.DictReader(summary.open())))
    assert order == [("cam", "cam"), ("cam", "full")]
    assert table[("cam", "cam")] == {"seeds": 0.40, "segmentation": 0.45, "segmentation_crf": 0.50}
    page = render_table(summary)
    assert "<td>40.0</td>" in page and "<td>75%</td>" in page and "<td>80%</td>" in page
    assert page.count("<tr>") == 3  # header + two experiments
    # Another dataset in the same summary, with the same experiment names: each table keeps its own.
    other = _write(tmp_path / "two.csv", columns, rows + [["e", "segmentation", "cam", "cam", "val", "miou", 0.1]])
    assert render_table(other, "d") == page
    page_e = render_table(other, "e")
    assert "<td>10.0</td>" in page_e and "<td>40.0</td>" not in page_e and page_e.count("<tr>") == 2


def test_sweep_and_per_class_plots(tmp_path: Path) -> None:
    curve = _write(tmp_path / "curve.csv", ["threshold", "miou"], [[0.1, 0.2], [0.2, 0.35], [0.3, 0.3]])
    per_class = _write(tmp_path / "pc.csv", ["class", "iou"], [["background", 0.8], ["a", 0.4], ["b", "nan"]])
    assert report_figures.main(["sweep", "--curve", f"seeds={curve}", "--out", str(tmp_path / "s.png")]) == 0
    assert report_figures.main(["per-class", "--per-class", f"seeds={per_class}", f"crf={per_class}",
                                "--out", str(tmp_path / "p.png")]) == 0
    for name in ("s.png", "p.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] >= 600 and image.size[1] >= 400
    with pytest.raises(SystemExit, match="NAME=PATH"):
        report_figures.main(["sweep", "--curve", str(curve), "--out", str(tmp_path / "x.png")])
    assert spread_ids([f"i{k}" for k in range(10)], 3) == ["i0", "i4", "i9"]


def test_gallery_shows_every_stage(shapes: dict[str, Path], tmp_path: Path) -> None:
    assert train_segmentation.main(_train_args(shapes, tmp_path, "--ground-truth", "--epochs", "1")) == 0
    manifest = read_manifest(shapes["manifest"])
    with MapWriter(tmp_path / "seeds.h5", stage="seeds", method="cam", params={}, dataset="shapes") as writer:
        for record in manifest.records:
            cams = np.stack([(read_label_mask(record.mask_path) == k + 1).astype(np.float32) for k in record.labels])
            writer.write(record.image_id, {"cam": cams, "keys": np.asarray(record.labels)}, {})
        writer.finish(manifest.ids)
    rows = _write(tmp_path / "rows.csv", ["dataset", "stage", "method", "classifier", "split", "metric", "value"],
                  [["d", "seeds", "cam", "cam", "train", "best_threshold", 0.3]])
    assert segment.main(["--model", str(tmp_path / "seg.pt"), "--manifest", str(shapes["manifest"]),
                         "--gallery", "2", "--out", str(tmp_path / "gallery.h5"), "--scales", "1.0",
                         "--device", "cpu"]) == 0
    with MapReader(tmp_path / "gallery.h5") as reader:
        assert sorted(reader.ids) == ["img0", "img5"]
    ids = render_gallery(shapes["manifest"], tmp_path / "gallery.h5", tmp_path / "g.png", 2,
                         tmp_path / "seeds.h5", rows, shapes["masks"], True)
    assert ids == ["img0", "img5"]
    with Image.open(tmp_path / "g.png") as image:
        # 6 panels (image, gt, seeds, pseudo mask, prediction, +CRF) of 32 px enlarged ×4; 2 rows with titles
        assert image.size == (6 * 128, 2 * (128 + 18 + 4))


def test_default_config_section_maps_to_the_step_options() -> None:
    """Every training key of config.yaml's segmentation section is an option of the step (as the
    rule passes them: --key value, booleans as --key / --no-key)."""
    import yaml

    section = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())["segmentation"]
    argv = ["--manifest", "m.csv", "--ground-truth", "--out", "o.pt"]
    for key, value in section.items():
        if key in ("test_scales", "flip", "crf", "init_from_classifier", "checkpoint_every") or value is None:
            continue
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(option if value else option.replace("--", "--no-", 1))
        else:
            argv += [option, *map(str, value if isinstance(value, list) else [value])]
    args = train_segmentation.build_parser().parse_args(argv)
    assert args.head == section["head"] and args.aspp_rates == section["aspp_rates"]
    assert list(args.resize_long) == section["resize_long"] and args.epochs == section["epochs"]
    test_scales = segment.build_parser().parse_args(
        ["--model", "m.pt", "--manifest", "v.csv", "--out", "p.h5", "--scales", *map(str, section["test_scales"])])
    assert test_scales.scales == section["test_scales"]


def test_report_screenshot_page_opens_the_result_after_the_last_body_end() -> None:
    from wsss_steps.report.screenshot import page_showing

    html = ('<html><body><script>var s = "</body>"; var results = {"results/x/stages.html": {}};</script>'
            "</body></html>")
    assert page_showing(html, None) == html
    page = page_showing(html, "results/x/stages.html")
    assert page.startswith(html[:html.rindex("</body>")]) and page.endswith("</body></html>")
    assert page.count("</body>") == 2 and page.index("setTimeout") > page.index("var results")
    assert 'results["results/x/stages.html"]' in page
    with pytest.raises(ValueError, match="no result 'results/y.png'"):
        page_showing(html, "results/y.png")


def test_precision_recall_figure_of_the_seed_methods(tmp_path: Path) -> None:
    header = ["threshold", "miou", "mean_precision", "mean_recall", "mean_fp_rate", "mean_fn_rate"]
    cam = _write(tmp_path / "cam.csv", header, [[0.1, 0.3, 0.4, 0.8, 0, 0], [0.3, 0.4, 0.6, 0.6, 0, 0]])
    adv = _write(tmp_path / "adv.csv", header, [[0.1, 0.35, 0.45, 0.85, 0, 0], [0.3, 0.45, 0.65, 0.7, 0, 0]])
    assert report_figures.main(["precision-recall", "--curve", f"cam={cam}", f"advcam={adv}",
                                "--out", str(tmp_path / "pr.png")]) == 0
    with Image.open(tmp_path / "pr.png") as image:
        assert image.size == (640, 480)
    empty = _write(tmp_path / "empty.csv", header, [])
    with pytest.raises(ValueError, match="holds no threshold sweep"):
        report_figures.main(["precision-recall", "--curve", f"x={empty}", "--out", str(tmp_path / "x.png")])
