"""What each epoch's weight-map generator does on a set of images: why the early-stopping score S
chooses the epoch it chooses.

For every epoch file ``epoch-NNN.pt`` of a ``train_weight_map`` checkpoint folder and every
``--every``-th image of a manifest: S, the GT-known hit of the paper's box (max/10, largest
contour), the share of the image above max/10 (1.0: the box is the whole image and S is 1 by
construction), the ratio of the map's minimum to its maximum, and the mean weight on the
ground-truth foreground and background (where the images have masks).

    .venv/bin/python diagnostics/weight_map_epochs.py \\
        --model results/msrc/weight_map/lite0_softmax/weight_map/model.pt \\
        --manifest results/msrc/wsol_data/val.csv --every 2

Prints one JSON line per epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_steps.data.images import IGNORE_LABEL, read_image, read_label_mask  # noqa: E402
from wsss_steps.data.manifest import read_manifest  # noqa: E402
from wsss_steps.methods.boxes import box_iou, normalize_map  # noqa: E402
from wsss_steps.methods.weight_map import (  # noqa: E402
    BOX_FRACTION,
    box_mass_score,
    predict_weight_map,
    weight_map_box,
)
from wsss_steps.networks.inputs import image_to_tensor  # noqa: E402
from wsss_steps.networks.io import load_weights_file  # noqa: E402
from wsss_steps.networks.weight_map import load_weight_map_generator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="the chosen generator (its architecture)")
    parser.add_argument("--checkpoints", type=Path, help="folder of epoch-NNN.pt (default: beside --model)")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator, meta = load_weight_map_generator(args.model)
    folder = args.checkpoints or args.model.parent / "checkpoints"
    records = read_manifest(args.manifest).records[::args.every]
    images = [image_to_tensor(read_image(r.image_path))[0] for r in records]
    for path in sorted(folder.glob("epoch-*.pt")):
        generator.load_state_dict(load_weights_file(path, "weight-map epoch")["model"])
        generator.eval()
        rows = []
        for record, image in zip(records, images, strict=True):
            weights = predict_weight_map(generator, image)
            normalized = normalize_map(weights)
            gt = np.array([tuple(b)[1:] for b in record.boxes if b.label in record.labels])
            hit = float(box_iou(weight_map_box(weights)[None], gt).max()) >= 0.5 if len(gt) else np.nan
            fg = bg = np.nan
            if record.mask_path is not None:
                mask = read_label_mask(record.mask_path)
                valid = mask != IGNORE_LABEL
                fg = float(weights[valid & (mask > 0)].mean()) if (valid & (mask > 0)).any() else np.nan
                bg = float(weights[valid & (mask == 0)].mean()) if (valid & (mask == 0)).any() else np.nan
            rows.append([box_mass_score(weights), hit, float((normalized > BOX_FRACTION).mean()),
                         float(weights.min() / max(weights.max(), 1e-12)), fg, bg])
        mean = np.nanmean(np.array(rows, dtype=np.float64), axis=0)
        print(json.dumps({"epoch": int(path.stem.split("-")[1]), "chosen": meta.get("chosen_epoch"),
                          "images": len(rows), "score": round(mean[0], 4), "gt_known": round(mean[1], 4),
                          "above_max_tenth": round(mean[2], 4), "min_over_max": round(mean[3], 4),
                          "fg_weight": round(mean[4], 4), "bg_weight": round(mean[5], 4)}))


if __name__ == "__main__":
    main()
