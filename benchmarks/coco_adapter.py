"""The COCO adapter's cost per 1,000 images: pycocotools' index of the annotation file, and
prepare_data's work per image (decode and check the JPEG, rasterise every instance with
pycocotools, write the label PNG, digest both files).

It writes a COCO-format tree of ``--images`` images of COCO's typical size (640 × 480 JPEGs of
noise, so decoding costs what a photo's does) with COCO's average of ~7.3 instances an image
(``--instances``): polygons of 8–24 vertices, every 10th image with an RLE crowd region, 1 % of
the images without objects (left out, as COCO train2014's ~0.8 %). Then it times
``CocoDataset`` + ``build_manifest`` as prepare_data runs them, in this process, on one thread.

    .venv/bin/python benchmarks/coco_adapter.py                 # 1,000 images
    .venv/bin/python benchmarks/coco_adapter.py --images 2000

The last line printed is a JSON object: index_s (the annotation file's load and index),
manifest_s (the split's manifest: decode, rasterise, write, digest), seconds_per_1000 for both
together, annotation_mb, and the settings. COCO train2014 (82,783 images, 604,907 instances, a
448 MB file) scales by images for the manifest and by file size for the index.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_steps.data.adapters import CocoDataset  # noqa: E402
from wsss_steps.data.manifest_builder import build_manifest  # noqa: E402

NUM_CATEGORIES = 80


def write_coco_tree(root: Path, images: int, instances: float, seed: int = 0) -> Path:
    """A COCO-format split ``train2014`` under ``root``; returns its annotation file."""
    rng = np.random.default_rng(seed)
    folder = root / "train2014"
    folder.mkdir(parents=True)
    categories = [{"id": i + 1 + i // 10, "name": f"class{i:02d}", "supercategory": "x"} for i in range(NUM_CATEGORIES)]
    entries, annotations = [], []
    height, width = 480, 640
    for number in range(1, images + 1):
        name = f"COCO_train2014_{number:012d}.jpg"
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / name), pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
        entries.append({"id": number, "file_name": name, "width": width, "height": height})
        if number % 100 == 0:
            continue  # an image without objects
        for _ in range(rng.poisson(instances)):
            cx, cy = rng.uniform(40, width - 40), rng.uniform(40, height - 40)
            radius = rng.uniform(10, 150)
            angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(8, 25)))
            xs = np.clip(cx + radius * rng.uniform(0.5, 1.0, angles.size) * np.cos(angles), 0, width - 1)
            ys = np.clip(cy + radius * rng.uniform(0.5, 1.0, angles.size) * np.sin(angles), 0, height - 1)
            polygon = np.stack([xs, ys], 1).ravel().round(2).tolist()
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
            annotations.append({"id": len(annotations) + 1, "image_id": number, "iscrowd": 0, "area": 1.0,
                                "category_id": categories[rng.integers(NUM_CATEGORIES)]["id"],
                                "segmentation": [polygon], "bbox": box})
        if number % 10 == 0:
            x0, columns = int(rng.integers(0, width - 100)), 100
            counts = [x0 * height, columns * height, (width - x0 - columns) * height]
            annotations.append({"id": len(annotations) + 1, "image_id": number, "iscrowd": 1, "area": 1.0,
                                "category_id": 1, "segmentation": {"size": [height, width], "counts": counts},
                                "bbox": [x0, 0, columns, height]})
    path = root / "annotations" / "instances_train2014.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--instances", type=float, default=7.3, help="mean instances per image (COCO: 7.3)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "coco"
        annotation_file = write_coco_tree(root, args.images, args.instances)
        start = time.perf_counter()
        dataset = CocoDataset(root)
        ids = dataset.split_ids("train2014")
        index_s = time.perf_counter() - start
        start = time.perf_counter()
        manifest = build_manifest(dataset, "train2014", require_masks=True, mask_dir=Path(tmp) / "masks")
        manifest_s = time.perf_counter() - start
        assert len(manifest.records) == len(ids)
        summary = {
            "index_s": round(index_s, 3), "manifest_s": round(manifest_s, 3),
            "seconds_per_1000": round((index_s + manifest_s) * 1000 / args.images, 2),
            "manifest_ms_per_image": round(manifest_s * 1000 / len(ids), 2),
            "annotation_mb": round(annotation_file.stat().st_size / 2**20, 2),
            "images": args.images, "kept": len(ids), "left_out": len(dataset.left_out["train2014"]),
            "instances": sum(1 for _ in json.loads(annotation_file.read_text())["annotations"]),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
