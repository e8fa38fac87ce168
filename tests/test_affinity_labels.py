"""Affinity labels: IRN's two-threshold rule, P-NOC's saliency rule, the sharded step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss_steps import affinity_labels
from wsss_steps.data.adapters import VocLayoutDataset
from wsss_steps.data.images import IGNORE_LABEL
from wsss_steps.data.manifest import ImageRecord, Manifest, write_manifest
from wsss_steps.data.manifest_builder import build_manifest
from wsss_steps.methods.affinity import saliency_labels, two_threshold_labels
from wsss_steps.methods.labels import padded_argmax
from wsss_steps.store.maps import MapReader, MapWriter

from .test_datasets import make_voc_layout

FLAT = np.full((20, 24, 3), 128, np.uint8)
# The same bands as `_seeds` in four colours: the dCRF's bilateral kernel keeps them apart.
BANDS = np.repeat(np.repeat(np.array([[[200, 40, 40], [40, 200, 40], [40, 40, 200], [220, 220, 60]]],
                                     np.uint8), 6, axis=1), 20, axis=0)


def _seeds() -> tuple[np.ndarray, np.ndarray]:
    """Two classes (keys 0 and 2) in four vertical bands of known seed scores."""
    cam = np.zeros((2, 20, 24), np.float32)
    cam[0, :, 0:6] = 0.5    # > conf_fg: class 0 → label 1
    cam[0, :, 6:12] = 0.2   # between conf_bg and conf_fg → uncertain
    cam[1, :, 12:18] = 0.9  # class 2 → label 3
    cam[1, :, 18:24] = 0.01  # < conf_bg → background
    return cam, np.array([0, 2])


def test_two_threshold_rule_without_crf() -> None:
    cam, keys = _seeds()
    label = two_threshold_labels(FLAT, cam, keys, conf_fg=0.30, conf_bg=0.05, crf=None)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label[0, [0, 6, 12, 18]], [1, IGNORE_LABEL, 3, 0])
    assert set(np.unique(label[:, 0:6])) == {1} and set(np.unique(label[:, 18:24])) == {0}
    # AdvCAM's 0.35 / 0.15 give the same labels here (0.5 > 0.35; 0.15 < 0.2 < 0.35).
    advcam = two_threshold_labels(FLAT, cam, keys, conf_fg=0.35, conf_bg=0.15, crf=None)
    np.testing.assert_array_equal(advcam, label)
    strict = two_threshold_labels(FLAT, cam, keys, conf_fg=0.6, conf_bg=0.3, crf=None)
    np.testing.assert_array_equal(strict[0, [0, 6, 12, 18]], [IGNORE_LABEL, 0, 3, 0])


def test_ties_go_to_background() -> None:
    cam = np.full((1, 2, 2), 0.3, np.float32)
    np.testing.assert_array_equal(padded_argmax(cam, 0.3), 0)


def test_crf_keeps_bands_that_follow_image_edges() -> None:
    cam, keys = _seeds()
    with_crf = two_threshold_labels(BANDS, cam, keys)
    without = two_threshold_labels(FLAT, cam, keys, crf=None)
    # Band interiors (2 px from each edge) keep their labels; only the borders may move.
    for lo, hi in ((0, 6), (6, 12), (12, 18), (18, 24)):
        np.testing.assert_array_equal(with_crf[:, lo + 2:hi - 2], without[:, lo + 2:hi - 2])


def test_saliency_rule() -> None:
    cam, keys = _seeds()
    saliency = np.ones((20, 24), np.float32)
    saliency[:10] = 0.05  # top half not salient
    label = saliency_labels(FLAT, cam, keys, saliency, sal_bg_threshold=0.10, sal_fg_threshold=0.40, crf=None)
    # Salient: class where its seed > 0.4 (bands 1 and 3), uncertain where the seeds are low.
    np.testing.assert_array_equal(label[15, [0, 6, 12, 18]], [1, IGNORE_LABEL, 3, IGNORE_LABEL])
    # Not salient: background, whatever the seeds say.
    np.testing.assert_array_equal(label[5, [0, 6, 12, 18]], [0, 0, 0, 0])
    image = BANDS.copy()
    image[:10] //= 4  # the non-salient half is darker: an edge for the dCRF to keep
    crf = saliency_labels(image, cam, keys, saliency)
    np.testing.assert_array_equal(crf[14:18, 2:4], 1)
    np.testing.assert_array_equal(crf[2:6, 2:4], 0)


def test_shapes_are_checked() -> None:
    cam, keys = _seeds()
    with pytest.raises(ValueError, match="K = 1 keys"):
        two_threshold_labels(FLAT, cam, keys[:1], crf=None)
    with pytest.raises(ValueError, match="saliency map"):
        saliency_labels(FLAT, cam, keys, np.ones((5, 5)), crf=None)


def write_seed_file(path: Path, manifest: Manifest, maker) -> None:
    """A complete seed map file: ``maker(record)`` gives cam (K, H, W)."""
    import math

    with MapWriter(path, stage="seeds", method="test", params={}, dataset=manifest.dataset) as writer:
        for record in manifest.records:
            cam = maker(record).astype(np.float16)
            h4, w4 = math.ceil(record.height / 4), math.ceil(record.width / 4)
            writer.write(record.image_id, {"cam": cam, "cam_stride4": cam[:, ::4, ::4][:, :h4, :w4],
                                           "keys": np.asarray(record.labels)},
                         {"height": record.height, "width": record.width})
        writer.finish(manifest.ids)


def band_seeds(record: ImageRecord) -> np.ndarray:
    cam = np.zeros((len(record.labels), record.height, record.width), np.float32)
    for k in range(len(record.labels)):
        cam[k, k * 4:(k + 1) * 4] = 0.9
    return cam


def test_cli_writes_a_shard(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog cat", "a3": "dog"})
    manifest = build_manifest(VocLayoutDataset(root, name="toy"), "train", require_masks=True)
    csv_path = write_manifest(manifest, tmp_path / "data")
    seeds = tmp_path / "seeds.h5"
    write_seed_file(seeds, manifest, band_seeds)
    out = tmp_path / "aff" / "shard-0-of-2.h5"
    assert affinity_labels.main(["--seeds", str(seeds), "--manifest", str(csv_path), "--out", str(out),
                                 "--shard", "0", "--num-shards", "2", "--no-crf"]) == 0
    with MapReader(out) as reader:
        assert reader.ids == ["a1", "a2"]
        assert reader.attrs["stage"] == "affinity_labels" and reader.attrs["method"] == "irn"
        a2 = reader.read("a2")
        assert a2["affinity_label"].dtype == np.uint8 and a2["affinity_label"].shape == (20, 24)
        np.testing.assert_array_equal(a2["keys"], [0, 1])
        np.testing.assert_array_equal(a2["affinity_label"][0:4], 1)  # cat (key 0) band
        np.testing.assert_array_equal(a2["affinity_label"][4:8], 2)  # dog (key 1) band
        np.testing.assert_array_equal(a2["affinity_label"][10:], 0)
        assert reader.params["conf_fg"] == 0.30 and reader.params["crf"] is None
