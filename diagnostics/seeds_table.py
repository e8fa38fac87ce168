"""The seeds of every classifier of a finished run as one Markdown table: the classifier's val mAP
and seconds per epoch (its metrics CSV), the seeds' mIoU at the best background threshold (and
that threshold), with dCRF, precision and recall at the best threshold, and the best precision
among thresholds with recall ≥ 0.8.

``--base CLASSIFIER`` adds where each classifier's seeds add mass over the base's (both
max-normalised per class; `seed_study.attribution_split`): on the object itself, on background
stuff, on other objects, on void. ``--judge MODEL --val-manifest CSV`` adds the judge's mean
probability of each label class on val images with that class's CAM (of each classifier) softly
erased, x ⊙ (1 − ψ(A_r)) (`cam_erasure.py`): what OC-CSE's term drives down when the judge is its
ordinary classifier.

    .venv/bin/python diagnostics/seeds_table.py results/msrc --base lite0 \\
        --judge results/msrc/classifier/lite0/model.pt --val-manifest results/msrc/data/val.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cam_erasure import erasure_probabilities  # noqa: E402
from seed_study import attribution_split  # noqa: E402


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results/<dataset> of a finished run")
    parser.add_argument("--seeds", default="cam", help="seeds entry (default: %(default)s)")
    parser.add_argument("--base", help="classifier whose seeds the others' added mass is measured against")
    parser.add_argument("--judge", type=Path, help="classifier judging the softly erased val images")
    parser.add_argument("--val-manifest", type=Path, help="val manifest for --judge")
    args = parser.parse_args()
    train_manifest = args.results / "data" / "train.csv"
    head = "| classifier | val mAP | s / epoch | seeds mIoU (thr.) | +dCRF | P / R at best | best P at R ≥ 0.8 |"
    if args.base:
        head += " added: own / background / other / void |"
    if args.judge:
        head += " judge's p on soft-erased val |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for folder in sorted((args.results / "eval" / "seeds").iterdir()):
        curve_path = folder / args.seeds / "curve.csv"
        if not curve_path.is_file():
            continue
        curve = _rows(curve_path)
        best = max(curve, key=lambda r: float(r["miou"]))
        recall_ok = [float(r["mean_precision"]) for r in curve if float(r["mean_recall"]) >= 0.8]
        crf_path = args.results / "eval" / "seeds_crf" / folder.name / args.seeds / "curve.csv"
        crf = max(float(r["miou"]) for r in _rows(crf_path)) if crf_path.is_file() else float("nan")
        metrics = _rows(args.results / "classifier" / folder.name / "metrics.csv")
        seconds = sum(float(r["seconds"]) for r in metrics) / len(metrics)
        line = (f"| {folder.name} | {float(metrics[-1]['val_map']):.3f} | {seconds:.1f} | "
                f"{100 * float(best['miou']):.1f} ({float(best['threshold']):.2f}) | {100 * crf:.1f} | "
                f"{float(best['mean_precision']):.2f} / {float(best['mean_recall']):.2f} | "
                f"{max(recall_ok, default=float('nan')):.2f} |")
        if args.base:
            maps = args.results / "seeds" / "{}" / args.seeds / "maps.h5"
            if folder.name == args.base:
                line += " |"
            else:
                split = attribution_split(Path(str(maps).format(args.base)), Path(str(maps).format(folder.name)),
                                          train_manifest)
                line += " {:.0f} / {:.0f} / {:.0f} / {:.0f} % |".format(
                    *(100 * split[k] for k in ("own", "background", "other_objects", "void")))
        if args.judge:
            erased = erasure_probabilities(args.results / "classifier" / folder.name / "model.pt",
                                           args.val_manifest, 0.2, judge_path=args.judge)
            line += f" {erased['soft_erased_mean']:.2f} |"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
