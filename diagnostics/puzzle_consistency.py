"""How far a classifier's CAM is from the CAM its own 2×2 tiles give (Puzzle-CAM's ‖A − A^re‖₁),
and where on the map the difference lies, at a few image sizes.

For every ``--every``-th image of a manifest and each size (the long side resized to it, then
zero-padded to a multiple of 2 × the output stride, as the training crops are): the full image's
CAM A and the tiles' merged CAM A^re of the label classes, the mean |A − A^re| relative to the
mean |A|, separately on the cells next to a tile edge (the ring each tile's convolutions pad) and
on the cells inside the tiles. If the difference sits on the tile edges and its share falls as the
maps grow, Puzzle-CAM's term on small maps mostly teaches the full CAM the tiles' edge artefacts.

    .venv/bin/python diagnostics/puzzle_consistency.py --classifier results/msrc/classifier/lite0/model.pt \\
        --manifest results/msrc/data/train.csv --every 4 --sizes 224 448

Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_steps.data.images import read_image  # noqa: E402
from wsss_steps.data.manifest import read_manifest  # noqa: E402
from wsss_steps.methods.erasure import merge_tiles, tile_images  # noqa: E402
from wsss_steps.networks.inputs import image_to_tensor  # noqa: E402
from wsss_steps.networks.io import load_classifier  # noqa: E402


def edge_cells(height: int, width: int) -> np.ndarray:
    """Cells of a merged 2×2-tile map on the outer ring of their tile."""
    ring = np.zeros((height, width), bool)
    th, tw = height // 2, width // 2
    for rows in (0, th - 1, th, height - 1):
        ring[rows, :] = True
    for cols in (0, tw - 1, tw, width - 1):
        ring[:, cols] = True
    return ring


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, type=Path)
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="long sides")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_classifier(args.classifier)
    unit = 2 * int(meta["output_stride"])
    records = read_manifest(args.manifest).records[:: args.every]
    for size in args.sizes:
        sums = {"edge": [0.0, 0.0], "inside": [0.0, 0.0]}  # |A − A^re|, |A|
        cells = {"edge": 0, "inside": 0}
        with torch.no_grad():
            for record in records:
                image = read_image(record.image_path)
                scale = size / max(image.shape[:2])
                resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                                     interpolation=cv2.INTER_LINEAR)
                tensor = image_to_tensor(resized)
                pad_h, pad_w = (-tensor.shape[2]) % unit, (-tensor.shape[3]) % unit
                tensor = F.pad(tensor, (0, pad_w, 0, pad_h))
                labels = list(record.labels)
                cams = model.forward_with_cams(tensor)[1][0, labels]
                merged = merge_tiles(model.forward_with_cams(tile_images(tensor))[1], 1)[0, labels]
                if merged.shape != cams.shape:
                    raise SystemExit(f"size {size}: merged {tuple(merged.shape)} vs {tuple(cams.shape)}")
                ring = torch.from_numpy(edge_cells(*cams.shape[1:]))
                for name, where in (("edge", ring), ("inside", ~ring)):
                    sums[name][0] += float((cams - merged).abs()[:, where].sum())
                    sums[name][1] += float(cams.abs()[:, where].sum())
                    cells[name] += int(where.sum()) * len(labels)
        total_diff = sums["edge"][0] + sums["inside"][0]
        print(json.dumps({
            "size": size, "images": len(records), "map_cells": list(cams.shape[1:]),
            "relative_l1_edge": round(sums["edge"][0] / max(sums["edge"][1], 1e-9), 3),
            "relative_l1_inside": round(sums["inside"][0] / max(sums["inside"][1], 1e-9), 3),
            "edge_share_of_cells": round(cells["edge"] / max(1, cells["edge"] + cells["inside"]), 3),
            "edge_share_of_difference": round(sums["edge"][0] / max(total_diff, 1e-9), 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
