"""The real-photo configuration (configs/msrc.yaml) end to end on a slice of MSRC-v2.

Needs the MSRC-v2 copy at ../shared/data/msrc beside the checkout (the project never ships it; a
user brings their own); skipped with a message where it is absent. The slice: 12 train and 6 val
images (every 23rd / 17th), one epoch per training (two for the weight map, whose choice reads every
epoch), AdvCAM with 3 steps; the localisation experiments on the slice's single-class images. Each
kind of stage runs once on the photos: AdvCAM's chain stops at its seeds (the chain after the seeds
is CAM's, the same steps), and of the saliency-background seeds those of C²AM-H and of its refinement
network run (plain C²AM trains the same network as C²AM-H, without hints); the CCT experiments are
left to the tiny run of tests/test_several_datasets.py (an epoch of CCT costs ~4 plain ones)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from .workflow_helpers import ROOT, snakemake, write_config

MSRC = ROOT.parent / "shared" / "data" / "msrc"

pytestmark = pytest.mark.skipif(not (MSRC / "ImageSets" / "Segmentation" / "train.txt").is_file(),
                                reason=f"MSRC-v2 is not at {MSRC} (the real-photo test bed; see README)")


def msrc_slice(root: Path, train_every: int = 23, val_every: int = 17) -> Path:
    """A VOC-layout dataset of a few MSRC images: links to the photos and masks, own split files."""
    root.mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass"):
        (root / name).symlink_to(MSRC / name, target_is_directory=True)
    for name in ("classes.txt", "labels.csv", "boxes.csv"):
        (root / name).write_text((MSRC / name).read_text())
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, every in (("train", train_every), ("val", val_every)):
        ids = (MSRC / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids[::every]) + "\n")
    return root


@pytest.fixture(scope="module")
def msrc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("msrc")
    config = yaml.safe_load((ROOT / "configs" / "msrc.yaml").read_text())
    config["dataset"]["root"] = str(msrc_slice(workdir / "msrc_slice"))
    for name in ("lite0", "lite0_softmax"):
        config["classifiers"][name]["epochs"] = 1
    for name in ("advcam", "advcam_wsol"):
        config["seeds"][name]["steps"] = 3
    config["weight_maps"]["weight_map"]["epochs"] = 2
    for entry in config["saliency"].values():
        entry["epochs"] = 1
    config["relation"]["epochs"] = 1
    config["segmentation"].update(epochs=1, checkpoint_every=1, test_scales=[1.0])
    config["report"]["gallery_images"] = 2
    config["resources"]["threads"] = 1
    config["shards"] = 1  # sharding is tested on the generated data; each shard job imports torch anew
    # The semi-supervised experiment's subset: 3 of the slice's train images, under the same name.
    train_ids = (workdir / "msrc_slice" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for experiment in config["experiments"]:
        if isinstance(experiment.get("segmentation"), dict):
            subset = workdir / Path(experiment["segmentation"]["ground_truth_subset"]).name
            subset.write_text("\n".join(train_ids[:3]) + "\n")
            experiment["segmentation"]["ground_truth_subset"] = str(subset)
    config["experiments"] = [
        {**experiment, "pseudo_masks": False} if experiment["seeds"] == "advcam" else experiment
        for experiment in config["experiments"] if experiment["seeds"] != "cam_c2am"
        and not (isinstance(experiment.get("segmentation"), dict) and experiment["segmentation"].get("method") == "cct")]
    del config["seeds"]["cam_c2am"], config["saliency"]["c2am"]
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2", timeout=1500)
    return workdir


def test_the_real_photo_configuration_runs_every_stage(msrc_run: Path) -> None:
    with (msrc_run / "results" / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["dataset"] for r in rows} == {"msrc"}
    stages = {(r["method"], r["stage"]) for r in rows if r["metric"] == "miou"}
    for stage in ("seeds", "seeds_crf", "pseudo_masks", "pseudo_masks_crf", "segmentation", "segmentation_crf"):
        assert ("cam", stage) in stages
    assert ("advcam", "seeds") in stages and ("advcam", "seeds_crf") in stages
    assert ("full", "segmentation") in stages
    assert ("cam+msrc_train_gt20", "segmentation") in stages  # the semi-supervised experiment
    for seeds in ("cam_c2am_h", "cam_refined"):  # CAM with each saliency as background
        assert (seeds, "seeds") in stages
    assert ("cam_c2am_h", "pseudo_masks") in stages and ("cam_c2am_h", "segmentation") in stages
    saliency = {(r["method"], r["metric"]): float(r["value"]) for r in rows if r["stage"] == "saliency"}
    for method in ("c2am_h", "refined", "cam_foreground"):
        assert 0.0 < saliency[(method, "fg_iou")] <= 1.0
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows if r["metric"] == "miou")
    classifier_map = [float(r["value"]) for r in rows if r["stage"] == "classifier" and r["metric"] == "map"
                      and r["classifier"] == "lite0"]
    assert len(classifier_map) == 1 and classifier_map[0] > 0.2  # 14 classes, ImageNet features, 1 epoch
    wsol = {(r["method"], r["metric"]): float(r["value"]) for r in rows if r["stage"] == "wsol"}
    for maps in ("cam", "advcam_wsol", "weight_map"):  # the single-class images of the slice's val
        assert 0.0 <= wsol[(maps, "gt_known_loc")] <= wsol[(maps, "maxboxacc")] <= 1.0
        assert 0.0 < wsol[(maps, "pxap")] <= 1.0 and wsol[(maps, "num_images")] >= 1
    assert wsol[("weight_map", "best_threshold")] == 0.1
    with (msrc_run / "results" / "msrc" / "data" / "train.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    assert len(manifest) == 12 and all(row["boxes"] for row in manifest)  # boxes.csv reached the manifest
    report = msrc_run / "results" / "msrc" / "report"
    assert (report / "stages.html").is_file() and (report / "lite0" / "cam" / "gallery.png").is_file()
