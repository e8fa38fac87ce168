"""Where a dataset keeps its class evidence, in two numbers a generated dataset can be held to.

A dataset on which seed methods can show their effect has class evidence outside the CAM: the
parts of each object the CAM misses still tell the class. This diagnostic measures that on any
train/val pair of manifests (MSRC, or a generated dataset), with the classifier recipe given:

(a) CAM seeds (scale 1 + flip) on every ``--every``-th train image: best-threshold mIoU and the
    mean precision and recall there (`diagnostics/seed_study.py`);
(b) class evidence outside the CAMs (`diagnostics/cam_erasure.py`, threshold 0.2 on ψ): the mean
    probability of each label class on val images with their own CAM softly erased, and the val
    mAP of a second classifier, the same recipe, trained and validated on images whose label-class
    CAM regions are filled with the image's mean colour.

    .venv/bin/python diagnostics/evidence_profile.py --train-manifest results/msrc/data/train.csv \\
        --val-manifest results/msrc/data/val.csv --out results/msrc/evidence \\
        --classifier results/msrc/classifier/lite0/model.pt -- --backbone efficientnet_lite0 \\
        --pretrained --output-stride 16 --epochs 6 --batch-size 16 --lr 0.01 --head-lr-mult 10 \\
        --resize-long 160 320 --crop 224

Everything after ``--`` is passed to `wsss_steps.train_classifier` (for the erased-image
classifier, and for the first classifier when ``--classifier`` is not given). The last line
printed is a JSON object with every number and the seconds each part took.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def _run(argv: list[str], log: Path) -> str:
    """Runs ``python argv...`` with the project importable; returns stdout, stderr goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        done = subprocess.run([sys.executable, *argv], check=False, stdout=subprocess.PIPE, stderr=handle,
                              env=env, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evidence_profile: {' '.join(argv[:3])} failed (see {log})")
    return done.stdout


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _train(manifest: Path, val_manifest: Path, out: Path, recipe: Sequence[str], threads: int) -> float:
    """Trains a classifier (skipped when its model exists); returns its last val mAP."""
    metrics = out / "metrics.csv"
    if not (out / "model.pt").is_file():
        _run(["-m", "wsss_steps.train_classifier", "--manifest", str(manifest), "--val-manifest",
              str(val_manifest), "--out", str(out / "model.pt"), "--metrics", str(metrics),
              "--threads", str(threads), *recipe], out / "train.log")
    rows = list(csv.DictReader(metrics.open()))
    return float(rows[-1]["val_map"])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, recipe = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-manifest", required=True, type=Path)
    parser.add_argument("--val-manifest", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--classifier", type=Path, help="a trained classifier (default: train one with the recipe)")
    parser.add_argument("--every", type=int, default=1, help="CAM seeds on every N-th train image")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not recipe:
        parser.error("give the classifier recipe after --, e.g. -- --backbone small_resnet --epochs 30")
    out: Path = args.out
    result: dict[str, object] = {"train_manifest": str(args.train_manifest), "recipe": " ".join(recipe)}

    started = time.perf_counter()
    classifier = args.classifier
    if classifier is None:
        result["clean_val_map"] = round(_train(args.train_manifest, args.val_manifest, out / "classifier", recipe,
                                               args.threads), 4)
        classifier = out / "classifier" / "model.pt"
    result["seconds_classifier"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    seeds = _last_json(_run([str(HERE / "seed_study.py"), "--classifier", str(classifier), "--manifest",
                             str(args.train_manifest), "--every", str(args.every), "--out", str(out / "seeds"),
                             "--shards", str(args.threads), "--variant", "cam:method=cam,scales=1.0"],
                            out / "seeds.log"))
    result.update(cam_miou=seeds["miou"], cam_threshold=seeds["threshold"], cam_precision=seeds["precision"],
                  cam_recall=seeds["recall"], cam_miou_crf=seeds["miou_crf"], cam_images=seeds["images"])
    result["seconds_seeds"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    erased = out / "erased"
    for split, manifest in (("train", args.train_manifest), ("val", args.val_manifest)):
        erasure = _last_json(_run([str(HERE / "cam_erasure.py"), "--classifier", str(classifier), "--manifest",
                                   str(manifest), "--erased-out", str(erased), "--threads", str(args.threads)],
                                  out / f"erasure_{split}.log"))
        if split == "val":
            result.update(clean_probability=erasure["clean_mean"], soft_erased_probability=erasure["soft_erased_mean"],
                          hard_erased_probability=erasure["hard_erased_mean"], erasure_pairs=erasure["pairs"])
    split_names = {"train": args.train_manifest.stem, "val": args.val_manifest.stem}
    result["erased_val_map"] = round(_train(erased / f"{split_names['train']}.csv", erased / f"{split_names['val']}.csv",
                                            out / "erased_classifier", recipe, args.threads), 4)
    result["seconds_erasure"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
