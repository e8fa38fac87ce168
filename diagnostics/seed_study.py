"""Seed methods side by side on a slice of a split: best mIoU, +dCRF, precision and recall at the
best threshold, the precision-recall curves, and where a method's extra attribution goes.

Each ``--variant NAME:key=value,...`` is a `wsss_steps.seeds` run (keys are its options: method,
scales (``1.0+1.5``), steps, penalty_weight, mask_threshold, preset, penalty_scale, ...) over every
``--every``-th image of the manifest, in ``--shards`` parallel processes of one thread, then
`wsss_steps.evaluate_masks` with and without dCRF. With ``--base NAME`` every other variant's maps are
compared with the base's, per image and class c after both are max-normalised: of the mass the
variant adds (Σ max(0, A_var − A_base)), the share on pixels of class c itself ("own"), on other
objects ("other objects"), on background stuff ("background") and on void.

    .venv/bin/python diagnostics/seed_study.py --classifier results/msrc/classifier/lite0/model.pt \\
        --manifest results/msrc/data/train.csv --every 5 --out results/msrc/seed_study --base cam \\
        --variant cam:method=cam,scales=1.0 --variant advcam:method=advcam,scales=1.0

Prints one JSON line per variant (the last ones), and writes OUT/<variant>/{maps.h5, eval/...}
and OUT/precision_recall.png.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_steps.data.images import IGNORE_LABEL, read_label_mask  # noqa: E402
from wsss_steps.data.manifest import read_manifest, write_manifest  # noqa: E402
from wsss_steps.report.figures import plot_precision_recall  # noqa: E402
from wsss_steps.store.maps import MapReader  # noqa: E402


def _run(argv: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with log.open("a") as handle:
        subprocess.run([sys.executable, "-m", *argv], check=True, stderr=handle, env=env)


def run_variant(name: str, options: dict[str, str], classifier: Path, manifest: Path, out: Path,
                shards: int) -> float:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    flat: list[str] = []
    for key, value in options.items():
        flag = key.replace("_", "-")
        if value in ("true", "false"):
            flat.append(f"--{flag}" if value == "true" else f"--no-{flag}")
        else:
            flat += [f"--{flag}", *(value.split("+") if key == "scales" else [value])]
    started = time.perf_counter()
    shard_paths = [folder / f"shard-{k}-of-{shards}.h5" for k in range(shards)]
    processes = []
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for k, path in enumerate(shard_paths):
        if path.is_file():
            continue
        log = (folder / f"shard-{k}.log").open("a")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "wsss_steps.seeds", "--classifier", str(classifier), "--manifest", str(manifest),
             "--shard", str(k), "--num-shards", str(shards), "--out", str(path), "--threads", "1", *flat],
            stderr=log, env=env))
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"seed_study: variant {name}: a seeds shard failed (see {folder}/shard-*.log)")
    seconds = time.perf_counter() - started
    maps = folder / "maps.h5"
    if not maps.is_file():
        _run(["wsss_steps.merge_maps", "--manifest", str(manifest), "--out", str(maps), *map(str, shard_paths)],
             folder / "merge.log")
    for stage, extra in (("seeds", []), ("seeds_crf", ["--crf", "--crf-thresholds", "0.05", "0.55", "0.05",
                                                        "--workers", str(shards)])):
        eval_dir = folder / "eval" / stage
        if (eval_dir / "summary_rows.csv").is_file():
            continue
        eval_dir.mkdir(parents=True, exist_ok=True)
        _run(["wsss_steps.evaluate_masks", "--manifest", str(manifest), "--maps", str(maps), "--map-name", "cam",
              "--thresholds", "0.05", "0.80", "0.05", *extra, "--stage", stage, "--method", name,
              "--curve", str(eval_dir / "curve.csv"), "--per-class", str(eval_dir / "per_class.csv"),
              "--summary", str(eval_dir / "summary_rows.csv")], folder / "evaluate.log")
    return seconds


def best_row(curve: Path) -> dict[str, float]:
    rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(curve.open())]
    return max(rows, key=lambda r: (r["miou"], -r["threshold"]))


def attribution_split(base: Path, variant: Path, manifest_path: Path) -> dict[str, object]:
    """Shares of the mass a variant adds over the base map (both max-normalised per class), over
    all classes and per class (``per_class``: class name -> shares and the class's added mass)."""
    manifest = read_manifest(manifest_path)
    places = ("own", "other_objects", "background", "void")
    totals = np.zeros((manifest.num_classes, len(places)))
    with MapReader(base) as a, MapReader(variant) as b:
        for record in manifest.records:
            gt = read_label_mask(record.mask_path)
            cam_a = np.asarray(a.read(record.image_id, ["cam"])["cam"], np.float32)
            cam_b = np.asarray(b.read(record.image_id, ["cam"])["cam"], np.float32)
            void, background = gt == IGNORE_LABEL, gt == 0
            for k, label in enumerate(record.labels):
                added = np.maximum(cam_b[k] - cam_a[k], 0)
                own = gt == label + 1
                totals[label] += [added[own].sum(), added[~own & ~void & ~background].sum(),
                                  added[background].sum(), added[void].sum()]

    def shares(row: np.ndarray) -> dict[str, float]:
        mass = row.sum()
        return {place: round(float(v / mass), 4) if mass else 0.0 for place, v in zip(places, row, strict=True)}

    pairs = max(1, sum(len(r.labels) for r in manifest.records))
    return shares(totals.sum(axis=0)) | {
        "added_per_image_class": round(float(totals.sum()) / pairs, 2),
        "per_class": {name: shares(totals[c]) | {"added": round(float(totals[c].sum()), 1)}
                      for c, name in enumerate(manifest.class_names) if totals[c].sum() > 0}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, type=Path)
    parser.add_argument("--manifest", required=True, type=Path, help="the split's manifest (with masks)")
    parser.add_argument("--every", type=int, default=5, help="every N-th image of the split (default: %(default)s)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME:key=value,...")
    parser.add_argument("--base", help="variant the others' added attribution is measured against")
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args(argv)
    manifest = read_manifest(args.manifest)
    sliced = dataclasses.replace(manifest, records=manifest.records[::args.every])
    sliced_path = write_manifest(sliced, args.out / "data")
    variants = {}
    for spec in args.variant:
        name, _, options = spec.partition(":")
        variants[name] = dict(item.split("=", 1) for item in options.split(",") if item)
    results = {}
    for name, options in variants.items():
        seconds = run_variant(name, options, args.classifier, sliced_path, args.out, args.shards)
        seeds, crf = (best_row(args.out / name / "eval" / s / "curve.csv") for s in ("seeds", "seeds_crf"))
        results[name] = {"variant": name, **options, "images": len(sliced.records),
                         "miou": round(100 * seeds["miou"], 2), "threshold": seeds["threshold"],
                         "precision": round(seeds["mean_precision"], 3), "recall": round(seeds["mean_recall"], 3),
                         "miou_crf": round(100 * crf["miou"], 2), "threshold_crf": crf["threshold"],
                         "seconds": round(seconds, 1)}
    if args.base:
        for name in variants:
            if name != args.base:
                results[name]["added_vs_" + args.base] = attribution_split(
                    args.out / args.base / "maps.h5", args.out / name / "maps.h5", sliced_path)
    plot_precision_recall([(name, args.out / name / "eval" / "seeds" / "curve.csv") for name in variants],
                          args.out / "precision_recall.png", f"seeds on {len(sliced.records)} images")
    for result in results.values():
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
