"""Scale by simulation: what grows with the number of images, measured on datasets of tiny photos.

VOC train_aug has 10,582 images and COCO 2014 train 82,783; neither fits this machine's time. What
the workflow does per image outside the networks does not depend on the image's content, so a
custom-layout dataset of N small images (``--image-size`` px JPEGs, 20 classes, 1–3 labelled
rectangles an image, masks in VOC numbering) measures it:

- ``prepare_s``: prepare_data on the split (decode and check every image and mask, digests, the
  manifest and its ``sources.json``), one process;
- ``plan_s`` / ``plan_again_s``: ``snakemake --dry-run`` of the default config's experiments
  (config.yaml: CAM, AdvCAM, P-NOC + C²AM-H, full, one WSOL; ``--shards`` jobs a stage) on it:
  the first after prepare_data, the second once more (its start-up checks stat every source file
  recorded in ``sources.json``);
- ``merge_s`` / ``merge_link_s``: merge_maps of ``--shards`` seed shards (float16 CAMs of the
  image size and at stride 4, one channel per label, as the seeds step writes them) by copy and by
  external links; ``maps_kb_per_image``: the merged file's size per image;
- ``eval_s`` / ``eval_peak_mb``: evaluate_masks' threshold sweep (16 thresholds) of those maps
  against the masks, its time and peak resident memory (``/usr/bin/time``).

The images are tiny, so the per-image figures here are those of bookkeeping, not of pixels: maps
and evaluation scale further with the pixels of an image (COCO's 640 × 480 is 300× 32 × 32).
Each size runs in its own folder under ``--work`` (kept; delete it afterwards).

    .venv/bin/python benchmarks/scale_simulation.py --sizes 2000 20000

The last line printed is a JSON object: one entry per size, and each quantity's growth from the
smallest to the largest size (1.0 = constant, the size ratio = linear).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_steps.data.manifest import read_manifest  # noqa: E402
from wsss_steps.store.maps import MapWriter, shard_ids  # noqa: E402

NUM_CLASSES = 20
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def write_dataset(root: Path, num_images: int, size: int, seed: int = 0) -> None:
    """A custom-layout dataset: JPEG noise photos, one rectangle of each label class in the mask."""
    rng = np.random.default_rng(seed)
    names = [f"class{k:02d}" for k in range(NUM_CLASSES)]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    ids, rows = [], ["image_id,labels"]
    band = max(1, size // 4)
    for index in range(num_images):
        image_id = f"img{index:06d}"
        labels = sorted(rng.choice(NUM_CLASSES, size=int(rng.integers(1, 4)), replace=False).tolist())
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for k, label in enumerate(labels):
            mask[k * band:(k + 1) * band, : size // 2] = label + 1
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), image)
        cv2.imwrite(str(root / "SegmentationClass" / f"{image_id}.png"), mask)
        ids.append(image_id)
        rows.append(f"{image_id},{' '.join(names[label] for label in labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[: max(1, num_images // 10)]) + "\n")


def workflow_config(root: Path, shards: int) -> dict[str, Any]:
    """The default config's chain (config.yaml) on the dataset: planned only, nothing here trains."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["dataset"] = {"name": "sim", "kind": "custom", "root": str(root)}
    config["shards"] = shards
    return config


def timed(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Seconds and peak resident MB of a command (``/usr/bin/time``), and its stdout."""
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "peak_kb=%M", *command], cwd=cwd, env=ENV,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    peak = re.findall(r"peak_kb=(\d+)", result.stderr)
    return seconds, int(peak[-1]) / 1024 if peak else float("nan"), result.stdout


def write_seed_shards(manifest_path: Path, out_dir: Path, shards: int) -> list[Path]:
    """Seed shards as the seeds step writes them (float16 CAMs, one channel per label class)."""
    manifest = read_manifest(manifest_path)
    records = {r.image_id: r for r in manifest.records}
    rng = np.random.default_rng(1)
    paths = []
    for shard in range(shards):
        path = out_dir / f"shard-{shard}-of-{shards}.h5"
        with MapWriter(path, stage="seeds", method="cam", params={"simulation": True},
                       dataset=manifest.dataset) as writer:
            ids = shard_ids(manifest.ids, shard, shards)
            for image_id in ids:
                record = records[image_id]
                k, h, w = len(record.labels), record.height, record.width
                cam = rng.random((k, h, w), dtype=np.float32).astype(np.float16)
                writer.write(image_id, {"cam": cam, "cam_stride4": cam[:, ::4, ::4],
                                        "keys": np.asarray(record.labels, np.int64)},
                             {"height": h, "width": w})
            writer.finish(ids)
        paths.append(path)
    return paths


def measure(work: Path, num_images: int, size: int, shards: int) -> dict[str, float]:
    folder = work / f"n{num_images}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    root = folder / "dataset"
    started = time.perf_counter()
    write_dataset(root, num_images, size)
    row: dict[str, float] = {"images": num_images, "write_s": time.perf_counter() - started}
    data = folder / "results" / "sim" / "data"
    python = [sys.executable, "-m"]
    row["prepare_s"], row["prepare_peak_mb"], _ = timed(
        [*python, "wsss_steps.prepare_data", "--kind", "custom", "--root", str(root), "--name", "sim",
         "--split", "train", "--out-dir", str(data), "--require-masks"], folder)
    timed([*python, "wsss_steps.prepare_data", "--kind", "custom", "--root", str(root), "--name", "sim",
           "--split", "val", "--out-dir", str(data), "--require-masks"], folder)
    (folder / "config.yaml").write_text(yaml.safe_dump(workflow_config(root, shards)))
    plan = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--dry-run", "--quiet",
            "rules"]
    row["plan_s"], row["plan_peak_mb"], out = timed(plan, folder)
    row["planned_jobs"] = float(re.search(r"^total\s+(\d+)$", out, re.MULTILINE).group(1))
    row["plan_again_s"], _, _ = timed(plan, folder)
    shard_paths = write_seed_shards(data / "train.csv", folder / "shards", shards)
    merged, linked = folder / "maps.h5", folder / "maps_linked.h5"
    row["merge_s"], row["merge_peak_mb"], _ = timed(
        [*python, "wsss_steps.merge_maps", "--manifest", str(data / "train.csv"), "--out", str(merged),
         *map(str, shard_paths)], folder)
    row["merge_link_s"], _, _ = timed(
        [*python, "wsss_steps.merge_maps", "--manifest", str(data / "train.csv"), "--out", str(linked), "--link",
         *map(str, shard_paths)], folder)
    row["maps_kb_per_image"] = merged.stat().st_size / 1024 / num_images
    row["eval_s"], row["eval_peak_mb"], _ = timed(
        [*python, "wsss_steps.evaluate_masks", "--manifest", str(data / "train.csv"), "--maps", str(merged),
         "--thresholds", "0.05", "0.80", "0.05", "--curve", str(folder / "curve.csv"),
         "--per-class", str(folder / "per_class.csv"), "--summary", str(folder / "rows.csv"),
         "--dataset", "sim", "--stage", "seeds", "--method", "cam", "--split", "train"], folder)
    for key in ("prepare", "merge", "eval"):
        row[f"{key}_images_per_s"] = num_images / row[f"{key}_s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsss_scale_simulation"))
    args = parser.parse_args()
    rows = []
    for num_images in sorted(args.sizes):
        row = measure(args.work, num_images, args.image_size, args.shards)
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
        rows.append(row)
    growth = {key: round(rows[-1][key] / rows[0][key], 2) for key in rows[0]
              if key.endswith(("_s", "_mb", "_per_image", "jobs")) and rows[0][key] > 0}
    print(json.dumps({"image_size": args.image_size, "shards": args.shards,
                      "sizes": [{k: round(v, 3) for k, v in row.items()} for row in rows], "growth": growth}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
