import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from wsss_steps.data.images import write_image, write_label_mask
from wsss_steps.data.manifest import ImageRecord, Manifest, read_manifest, write_manifest
from wsss_steps.evaluate_masks import main
from wsss_steps.evaluation.masks import EvaluationError, evaluate_seeds, threshold_list
from wsss_steps.evaluation.metrics import confusion_matrix
from wsss_steps.evaluation.summary import SummaryError, summarize
from wsss_steps.store.maps import MapWriter, merge_shards, shard_path

CLASSES = ("cat", "dog")


def _toy_images():
    """Three images whose sweep is known by hand (see test_known_best_threshold)."""
    mask_a = np.zeros((4, 4), dtype=np.uint8)
    mask_a[:, :2] = 1  # cat
    mask_a[3, 3] = 255
    cam_a = np.full((1, 4, 4), 0.3, dtype=np.float32)
    cam_a[0, :, :2] = 0.6
    cam_a[0, 0, 3] = 0.7  # a background pixel the cat map covers up to t = 0.70

    mask_b = np.zeros((4, 4), dtype=np.uint8)
    mask_b[:2] = 2  # dog
    cam_b = np.full((1, 4, 4), 0.2, dtype=np.float32)
    cam_b[0, :2] = 0.5

    mask_c = np.array([[0, 0, 0], [1, 1, 1]], dtype=np.uint8)  # a cat with no map at all (K = 0)
    cam_c = np.zeros((0, 2, 3), dtype=np.float32)
    return {"a": (mask_a, cam_a, [0]), "b": (mask_b, cam_b, [1]), "c": (mask_c, cam_c, [])}


def _build(tmp_path: Path, images, map_ids=None, labels=None):
    """Writes images, masks, the manifest and a merged seed file; returns (manifest csv, maps)."""
    root = tmp_path / "toy"
    records = []
    rng = np.random.default_rng(0)
    for image_id, (mask, _, keys) in images.items():
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        mask_path = root / "SegmentationClass" / f"{image_id}.png"
        write_image(image_path, rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8))
        write_label_mask(mask_path, mask)
        image_labels = tuple(keys) or (0,)
        records.append(ImageRecord(image_id, image_path, mask_path, image_labels, *mask.shape))
    manifest_csv = write_manifest(Manifest("toy", "train", CLASSES, records), root / "data")
    map_ids = list(images) if map_ids is None else map_ids
    shard = shard_path(root / "seeds", 0, 1)
    with MapWriter(shard, stage="seeds", method="cam", params={}, dataset="toy") as writer:
        for image_id in map_ids:
            mask, cam, keys = images[image_id]
            writer.write(image_id, {"cam": cam, "keys": np.asarray(keys, dtype=np.int64)},
                         {"height": mask.shape[0], "width": mask.shape[1]})
        writer.finish(map_ids)
    merged = root / "seeds.h5"
    merge_shards([shard], merged, map_ids)
    return manifest_csv, merged


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _run(manifest_csv, maps, out, *extra):
    main(["--manifest", str(manifest_csv), "--maps", str(maps), "--curve", str(out / "curve.csv"),
          "--per-class", str(out / "per_class.csv"), "--summary", str(out / "rows.csv"),
          "--classifier", "cam", *extra])


def test_threshold_list_is_exact():
    thresholds = threshold_list(0.05, 0.80, 0.05)
    assert len(thresholds) == 16
    assert thresholds[2] == 0.15 and thresholds[5] == 0.3 and thresholds[-1] == 0.8
    assert threshold_list(0.15, 0.34, 0.01)[-1] == 0.34


def test_known_best_threshold(tmp_path):
    manifest_csv, maps = _build(tmp_path, _toy_images())
    _run(manifest_csv, maps, tmp_path / "out")
    # For 0.30 <= t < 0.50 (t = 0.30 is a tie with image a's background: background wins):
    # rows gt / columns pred: bg [17, 1, 0], cat [3, 8, 0], dog [0, 0, 8]
    # IoU bg 17/21, cat 8/12, dog 8/8 -> mIoU 52/63. Every other threshold scores lower.
    curve = _read(tmp_path / "out" / "curve.csv")
    assert [float(r["threshold"]) for r in curve] == threshold_list(0.05, 0.80, 0.05)
    miou = {float(r["threshold"]): float(r["miou"]) for r in curve}
    for t in (0.3, 0.35, 0.4, 0.45):
        assert miou[t] == pytest.approx(52 / 63)
    # t = 0.20, 0.25: all of a's background is cat; b's 0.2 background ties at 0.20 -> background
    assert miou[0.2] == pytest.approx((Fraction(11, 21) + Fraction(8, 18) + 1) / 3)
    assert miou[0.25] == miou[0.2]
    assert max(miou.values()) == pytest.approx(52 / 63)

    per_class = {r["class"]: r for r in _read(tmp_path / "out" / "per_class.csv")}
    assert list(per_class) == ["background", "cat", "dog"]
    expected = {"background": (17 / 21, 17 / 20, 17 / 18, 3 / 21, 1 / 21),
                "cat": (8 / 12, 8 / 9, 8 / 11, 1 / 12, 3 / 12), "dog": (1, 1, 1, 0, 0)}
    for name, values in expected.items():
        got = [float(per_class[name][k]) for k in ("iou", "precision", "recall", "fp_rate", "fn_rate")]
        np.testing.assert_allclose(got, values)

    rows = _read(tmp_path / "out" / "rows.csv")
    assert list(rows[0]) == ["dataset", "stage", "method", "classifier", "split", "metric", "value"]
    assert {(r["dataset"], r["stage"], r["method"], r["classifier"], r["split"]) for r in rows} == {
        ("toy", "seeds", "cam", "cam", "train")}
    values = {r["metric"]: float(r["value"]) for r in rows}
    assert values["miou"] == pytest.approx(52 / 63)
    assert values["best_threshold"] == 0.3
    assert values["num_images"] == 3
    assert values["iou/cat"] == pytest.approx(2 / 3)
    assert values["precision/background"] == pytest.approx(17 / 20)
    assert values["recall/cat"] == pytest.approx(8 / 11)
    assert values["fn_rate/cat"] == pytest.approx(1 / 4)


def test_vectorised_sweep_equals_straightforward(tmp_path):
    rng = np.random.default_rng(3)
    images = {}
    for n in range(4):
        h, w = rng.integers(5, 12, size=2)
        keys = sorted(rng.choice(2, size=int(rng.integers(0, 3)), replace=False).tolist())
        mask = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
        mask[rng.random((h, w)) < 0.1] = 255
        cam = (rng.random((len(keys), h, w)) ** 2).astype(np.float16)  # stored as seeds are
        cam[..., 0, :] = np.float16(0.25)
        images[f"img{n}"] = (mask, cam, keys)
    manifest_csv, maps = _build(tmp_path, images)
    thresholds = threshold_list(0.05, 0.80, 0.05)
    got = evaluate_seeds(read_manifest(manifest_csv), maps, "cam", thresholds)
    for i, t in enumerate(thresholds):
        expected = np.zeros((3, 3), dtype=np.int64)
        for mask, cam, keys in images.values():
            cam32 = cam.astype(np.float32)
            padded = np.concatenate([np.full((1, *mask.shape), t, dtype=np.float32), cam32])
            pred = np.array([0] + [k + 1 for k in keys])[padded.argmax(axis=0)]
            expected += confusion_matrix(mask, pred, 3)
        np.testing.assert_array_equal(got[i], expected, err_msg=f"threshold {t}")


def test_crf_sweep_and_workers(tmp_path):
    manifest_csv, maps = _build(tmp_path, _toy_images())
    out = tmp_path / "crf"
    _run(manifest_csv, maps, out, "--crf", "--crf-thresholds", "0.1", "0.5", "0.2")
    curve = _read(out / "curve.csv")
    assert [float(r["threshold"]) for r in curve] == [0.1, 0.3, 0.5]
    rows = _read(out / "rows.csv")
    assert {r["stage"] for r in rows} == {"seeds_crf"}
    manifest = read_manifest(manifest_csv)
    one = evaluate_seeds(manifest, maps, "cam", [0.1, 0.3, 0.5], crf=True, workers=1)
    two = evaluate_seeds(manifest, maps, "cam", [0.1, 0.3, 0.5], crf=True, workers=2)
    np.testing.assert_array_equal(one, two)
    assert one.sum(axis=(1, 2)).tolist() == [15 + 16 + 6] * 3  # every valid pixel, once per threshold
    assert one[:, 2].sum(axis=-1).tolist() == [8, 8, 8]  # the dog rows


def test_missing_image_names_it(tmp_path):
    images = _toy_images()
    manifest_csv, maps = _build(tmp_path, images, map_ids=["a", "c"])
    with pytest.raises(EvaluationError, match=r"'b'") as error:
        _run(manifest_csv, maps, tmp_path / "out")
    assert str(maps) in str(error.value)
    assert not (tmp_path / "out" / "curve.csv").exists()


def test_missing_mask_and_size_mismatch(tmp_path):
    images = _toy_images()
    manifest_csv, maps = _build(tmp_path, images)
    manifest = read_manifest(manifest_csv)
    mask_b = manifest.record("b").mask_path
    mask_b.unlink()
    with pytest.raises(EvaluationError, match=r"image 'b'") as error:
        evaluate_seeds(manifest, maps, "cam", [0.3])
    assert str(mask_b) in str(error.value)
    write_label_mask(mask_b, np.zeros((5, 4), dtype=np.uint8))
    with pytest.raises(EvaluationError, match=r"image 'b'.*\(4, 4\).*\(5, 4\)"):
        evaluate_seeds(manifest, maps, "cam", [0.3])
    with pytest.raises(EvaluationError, match="no dataset 'sal'"):
        evaluate_seeds(manifest, maps, "sal", [0.3])


def test_help_runs():
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_summarize_concatenates_and_rejects_duplicates(tmp_path):
    manifest_csv, maps = _build(tmp_path, _toy_images())
    _run(manifest_csv, maps, tmp_path / "plain")
    _run(manifest_csv, maps, tmp_path / "crf", "--crf", "--crf-thresholds", "0.3", "0.3", "0.1")
    out = tmp_path / "results" / "summary.csv"
    count = summarize([tmp_path / "crf" / "rows.csv", tmp_path / "plain" / "rows.csv"], out)
    rows = _read(out)
    assert len(rows) == count == 2 * len(_read(tmp_path / "plain" / "rows.csv"))
    keys = [tuple(r[c] for c in ("dataset", "stage", "method", "classifier", "split", "metric")) for r in rows]
    assert keys == sorted(keys)
    assert {r["stage"] for r in rows} == {"seeds", "seeds_crf"}
    with pytest.raises(SummaryError, match="in both"):
        summarize([tmp_path / "plain" / "rows.csv", tmp_path / "plain" / "rows.csv"], out)
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,stage,method,split,metric,value\ntoy,seeds,cam,train,miou,high\n")
    with pytest.raises(SummaryError, match="not a number"):
        summarize([bad], out)
