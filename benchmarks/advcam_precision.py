"""Benchmark: the rounding sensitivity of AdvCAM's climb, fp32 against bf16 (or fp16) autocast.

The climb amplifies rounding (`wsss_steps.methods.advcam`, "Numerics"), so lower precision
changes the maps by more than one forward pass's rounding. This measures what matters: the seeds'
mIoU on real images. It climbs the same ``--images`` images of an MSRC split (VOC layout:
JPEGImages, SegmentationClass, ImageSets/Segmentation, classes.txt, labels.csv; ``--data``,
default ../shared/data/msrc beside the repository) with a trained CAM classifier
(``--classifier`` model.pt) once per ``--precision``, writes each as the seeds step does
(`AdvCamSeeds` + `write_seed_shard`, float16 files), and scores them with the project's seed
evaluation (`evaluate_seeds`: the background threshold sweep, best mIoU). Also reported: the
largest and mean absolute difference of each precision's maps from the first precision's (as
stored: float16, a 5e-4 step), and the seconds each took. A seed file already in ``--out-dir``
with the same params (classifier and images included) is reused, its seconds not measured: a long
run can be completed one precision at a time. Where the data or the classifier is absent it says
so and exits 0. The last line printed is a JSON object.

    nice .venv/bin/python benchmarks/advcam_precision.py --classifier results/msrc/classifier/lite0/model.pt \\
        --images 10 --scales 1.0 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsss_steps.data.adapters import open_dataset  # noqa: E402
from wsss_steps.data.manifest import spread_ids  # noqa: E402
from wsss_steps.data.manifest_builder import build_manifest  # noqa: E402
from wsss_steps.evaluation.masks import (  # noqa: E402
    DEFAULT_THRESHOLDS,
    best_index,
    evaluate_seeds,
    threshold_list,
)
from wsss_steps.evaluation.metrics import mean_iou  # noqa: E402
from wsss_steps.methods.advcam import AdvCamConfig, AdvCamSeeds  # noqa: E402
from wsss_steps.networks.inputs import resolve_device  # noqa: E402
from wsss_steps.networks.io import load_classifier  # noqa: E402
from wsss_steps.networks.numerics import PRECISIONS, Numerics  # noqa: E402
from wsss_steps.store.maps import MapReader  # noqa: E402
from wsss_steps.store.shards import write_seed_shard  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "msrc"


def skip(reason: str) -> dict[str, Any]:
    print(f"advcam_precision: skipped: {reason}", file=sys.stderr)
    summary = {"skipped": reason}
    print(json.dumps(summary))
    return summary


def _reusable(path: Path, params: dict[str, Any], ids: list[str]) -> bool:
    if not path.is_file():
        return False
    with MapReader(path) as reader:
        return reader.params == json.loads(json.dumps(params)) and sorted(reader.ids) == sorted(ids)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MSRC root (default: %(default)s)")
    parser.add_argument("--split", default="train", help="the split whose images are climbed (default: train)")
    parser.add_argument("--classifier", type=Path, help="a trained CAM classifier of the dataset's classes")
    parser.add_argument("--images", type=int, default=10, help="images, spread over the split (default: 10)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32", "bf16"],
                        help="the first is the baseline of the differences (default: fp32 bf16)")
    parser.add_argument("--steps", type=int, default=27)
    parser.add_argument("--scales", type=float, nargs="+", default=list(AdvCamConfig().scales))
    parser.add_argument("--preset", default="paper", choices=("paper", "reference_code"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, help="where the seed files go (default: a temporary folder)")
    args = parser.parse_args(argv)

    if not (args.data / "JPEGImages").is_dir():
        return skip(f"no MSRC data at {args.data} (JPEGImages missing)")
    if args.classifier is None or not args.classifier.is_file():
        return skip(f"no classifier file ({args.classifier}); train one (wsss_steps.train_classifier) and "
                    "pass --classifier")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    manifest = build_manifest(open_dataset({"kind": "custom", "name": "msrc", "root": str(args.data)}),
                              args.split, require_masks=True)
    chosen = set(spread_ids(manifest.ids, args.images))
    manifest = dataclasses.replace(manifest, records=[r for r in manifest.records if r.image_id in chosen])
    model, meta = load_classifier(args.classifier, device)
    if tuple(meta.get("class_names", manifest.class_names)) != manifest.class_names:
        return skip(f"{args.classifier} was trained on other classes than {args.data}'s")
    config = AdvCamConfig.preset(args.preset, steps=args.steps, scales=tuple(args.scales))
    thresholds = threshold_list(*DEFAULT_THRESHOLDS)
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="advcam_precision_"))
    out_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, Any]] = {}
    maps: dict[str, dict[str, np.ndarray]] = {}
    identity = {"classifier": str(args.classifier.resolve()), "images": manifest.content_digest()}
    for precision in args.precision:
        numerics = Numerics(precision)
        params = {**config.params(), **numerics.params(), **identity}
        path = out_dir / f"seeds-{precision}.h5"
        seconds: float | None = None
        if not _reusable(path, params, manifest.ids):
            path.unlink(missing_ok=True)
            started = time.perf_counter()
            write_seed_shard(manifest, 0, 1, path, AdvCamSeeds(model, manifest.records, config, device,
                                                               numerics=numerics), "advcam", params)
            seconds = time.perf_counter() - started
        confusions = evaluate_seeds(manifest, path, "cam", thresholds)
        mious = np.asarray(mean_iou(confusions))
        best = best_index(mious)
        with MapReader(path) as reader:
            maps[precision] = {i: np.asarray(reader.read(i, ["cam"])["cam"], np.float32) for i in manifest.ids}
        results[precision] = {"best_miou": round(float(mious[best]), 4), "best_threshold": thresholds[best],
                              "miou_curve": [round(float(m), 4) for m in mious],
                              "seconds": None if seconds is None else round(seconds, 1)}
        done = f"reused {path}" if seconds is None else f"{seconds:.1f} s"
        print(f"{precision}: best mIoU {mious[best]:.4f} at {thresholds[best]}, {done}", file=sys.stderr)
    baseline = args.precision[0]
    for precision in args.precision[1:]:
        differences = [np.abs(maps[precision][i] - maps[baseline][i]) for i in manifest.ids]
        results[precision][f"max_abs_diff_vs_{baseline}"] = float(max(d.max() for d in differences))
        results[precision][f"mean_abs_diff_vs_{baseline}"] = float(np.mean([d.mean() for d in differences]))
        results[precision][f"miou_change_vs_{baseline}"] = round(
            results[precision]["best_miou"] - results[baseline]["best_miou"], 4)
    summary = {
        "results": results,
        "images": len(manifest.records), "image_ids": manifest.ids, "split": args.split,
        "labels_per_image": [len(r.labels) for r in manifest.records],
        "steps": args.steps, "scales": list(config.scales), "preset": args.preset,
        "thresholds": [thresholds[0], thresholds[-1], len(thresholds)],
        "classifier": str(args.classifier), "data": str(args.data), "device": str(device),
        "cpu": platform.processor() or platform.machine(), "threads": args.threads,
        "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
