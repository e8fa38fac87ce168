"""How much of a classifier's class evidence lies outside its own CAM (a diagnostic, not a step).

For every image of a manifest and every class r of its label: the CAM A_r at scale 1, ψ(A_r) its
max-normalised ReLU, and the classifier's probability of r on the clean image, on the image with
the CAM softly erased, x ⊙ (1 − ψ(A_r)) (what OC-CSE feeds its ordinary classifier, docs/methods.md §3),
and on the image with the region ψ(A_r) > ``--hard-threshold`` set to zero (the normalised
image's mean colour).

``--erased-out DIR`` also writes each image with the CAM regions of all its label classes
(ψ > ``--hard-threshold``) filled with the image's mean colour, and a manifest of them
(``DIR/{split}.csv``): a classifier trained on those (``python -m wsss_steps.train_classifier
--manifest DIR/train.csv --val-manifest DIR/val.csv ...``) shows how much class evidence the rest
of the images holds, which is what OC-CSE's and P-NOC's erasure losses can use. ``--judge`` measures
another classifier's probabilities on the images erased with ``--classifier``'s CAMs (a variant's
CAMs judged by its ordinary classifier, as OC-CSE's loss judges them).

If erasing the CAM leaves the class recognisable, the rest of the object still carries evidence
and methods that grow the map from class evidence (AdvCAM's climb, OC-CSE's erasure loss) have
something to find; if the probability collapses, the evidence is all inside the map and the rest
of each object has to come from appearance (the relation network's boundaries).

    .venv/bin/python diagnostics/cam_erasure.py --classifier results/synth/classifier/cam/model.pt \\
        --manifest results/synth/data/val.csv

The last line printed is a JSON object: the mean probabilities and the share above 0.5 for the
clean, softly erased and hard-erased images, and the number of (image, class) pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_steps.data.images import read_image, write_image  # noqa: E402
from wsss_steps.data.manifest import read_manifest, write_manifest  # noqa: E402
from wsss_steps.methods.cams import max_normalize  # noqa: E402
from wsss_steps.networks.inputs import image_to_tensor  # noqa: E402
from wsss_steps.networks.io import load_classifier  # noqa: E402


def erasure_probabilities(classifier: Path, manifest_path: Path, hard_threshold: float,
                          erased_out: Path | None = None, judge_path: Path | None = None) -> dict[str, float]:
    model, _ = load_classifier(classifier)
    model.eval()
    judge = load_classifier(judge_path)[0].eval() if judge_path is not None else model
    manifest = read_manifest(manifest_path)
    erased_records = []
    rows = []
    with torch.no_grad():
        for record in manifest.records:
            pixels = read_image(record.image_path)
            image = image_to_tensor(pixels, "cpu")
            _, cams = model.forward_with_cams(image)
            cams = F.interpolate(F.relu(cams), image.shape[2:], mode="bilinear", align_corners=False)[0]
            psi = max_normalize(cams[list(record.labels)])
            for label, psi_label in zip(record.labels, psi, strict=True):
                batch = torch.cat([image, image * (1 - psi_label), image * (psi_label <= hard_threshold)])
                rows.append(torch.sigmoid(judge(batch))[:, label].numpy())
            if erased_out is not None:
                erased = pixels.copy()
                erased[(psi > hard_threshold).any(dim=0).numpy()] = pixels.reshape(-1, 3).mean(axis=0)
                path = erased_out / "JPEGImages" / f"{record.image_id}.jpg"
                write_image(path, erased)
                erased_records.append(dataclasses.replace(record, image_path=path))
    if erased_out is not None:
        write_manifest(dataclasses.replace(manifest, records=erased_records), erased_out)
    if not rows:
        raise SystemExit(f"cam_erasure: {manifest_path} has no labelled image")
    probabilities = np.stack(rows)
    result: dict[str, float] = {"pairs": len(rows)}
    for column, name in enumerate(("clean", "soft_erased", "hard_erased")):
        result[f"{name}_mean"] = round(float(probabilities[:, column].mean()), 4)
        result[f"{name}_above_half"] = round(float((probabilities[:, column] > 0.5).mean()), 4)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, type=Path, help="trained classifier (model.pt)")
    parser.add_argument("--manifest", required=True, type=Path, help="split manifest CSV")
    parser.add_argument("--hard-threshold", type=float, default=0.2,
                        help="ψ above it is erased in the hard variant (default: %(default)s)")
    parser.add_argument("--erased-out", type=Path,
                        help="also write the images with their CAM regions erased (--classifier's CAMs, "
                        "whatever the judge), and their manifest, here")
    parser.add_argument("--judge", type=Path,
                        help="the classifier whose probabilities are measured (default: --classifier): "
                        "e.g. OC-CSE's ordinary classifier, judging the variant's CAMs as its loss does")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = erasure_probabilities(args.classifier, args.manifest, args.hard_threshold, args.erased_out,
                                   args.judge)
    print(json.dumps({**result, "hard_threshold": args.hard_threshold}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
