"""What `prepare_data`'s full decode and content digests cost on a VOC-sized tree (a benchmark).

Writes ``--images`` JPEGs of 500×375 (smooth random content, ~VOC file sizes) and palette masks in
the VOC layout under ``--root`` (kept for reruns), then times, side by side on the same files:
the header-only scan (sizes from the file header, what a manifest without decode checks would
cost), OpenCV's decode (what `prepare_data` did before), and the current check (PIL full decode,
which catches truncation, plus the sha256 of image and mask bytes). Prints one JSON line.

    .venv/bin/python diagnostics/manifest_cost.py --root /tmp/voc_sized --images 10582
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_steps.data.adapters import VocLayoutDataset  # noqa: E402
from wsss_steps.data.images import file_content_digest, write_image, write_label_mask  # noqa: E402
from wsss_steps.data.manifest_builder import build_manifest  # noqa: E402


def write_tree(root: Path, count: int) -> None:
    if (root / "ImageSets" / "Segmentation" / "train.txt").is_file():
        return
    rng = np.random.default_rng(0)
    ids = []
    for index in range(count):
        image_id = f"img_{index:06d}"
        noise = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        image = cv2.resize(noise, (500, 375), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image.astype(np.int16) + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)
        write_image(root / "JPEGImages" / f"{image_id}.jpg", image)
        mask = np.zeros((375, 500), np.uint8)
        mask[100:260, 120:380] = 1
        write_label_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        ids.append(image_id)
    (root / "classes.txt").write_text("thing\n")
    (root / "labels.csv").write_text("image_id,labels\n" + "".join(f"{i},thing\n" for i in ids))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--images", type=int, default=10582)
    args = parser.parse_args()
    started = time.perf_counter()
    write_tree(args.root, args.images)
    result: dict[str, float | int] = {"images": args.images, "seconds_write": round(time.perf_counter() - started, 1)}
    paths = sorted((args.root / "JPEGImages").glob("*.jpg"))
    result["mb_images"] = round(sum(p.stat().st_size for p in paths) / 1e6, 1)

    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as img:
            img.size  # noqa: B018 (the header read is the point)
    result["seconds_header_only"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    for path in paths:
        cv2.imread(str(path), cv2.IMREAD_COLOR)
    result["seconds_opencv_decode"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    for path in paths:
        file_content_digest(path, args.root / "SegmentationClass" / f"{path.stem}.png")
    result["seconds_digests_only"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    manifest = build_manifest(VocLayoutDataset(args.root, name="voc_sized"), "train", require_masks=True)
    result["seconds_build_manifest"] = round(time.perf_counter() - started, 1)
    assert len(manifest.records) == len(paths) and all(r.digest for r in manifest.records)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
