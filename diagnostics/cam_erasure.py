"""How much of a classifier's class evidence lies outside its own CAM (a diagnostic, not a step).

For every image of a manifest and every class r of its label: the CAM A_r at scale 1, ψ(A_r) its
max-normalised ReLU, and the classifier's probability of r on the clean image, on the image with
the CAM softly erased, x ⊙ (1 − ψ(A_r)) (what OC-CSE feeds its ordinary classifier, METHODS §3),
and on the image with the region ψ(A_r) > ``--hard-threshold`` set to zero (the normalised
image's mean colour).

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
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_steps.cams import max_normalize  # noqa: E402
from wsss_steps.datasets import read_manifest  # noqa: E402
from wsss_steps.image_io import read_image  # noqa: E402
from wsss_steps.networks.io import load_classifier  # noqa: E402
from wsss_steps.preprocess import image_to_tensor  # noqa: E402


def erasure_probabilities(classifier: Path, manifest_path: Path, hard_threshold: float) -> dict[str, float]:
    model, _ = load_classifier(classifier)
    model.eval()
    manifest = read_manifest(manifest_path)
    rows = []
    with torch.no_grad():
        for record in manifest.records:
            image = image_to_tensor(read_image(record.image_path), "cpu")
            _, cams = model.forward_with_cams(image)
            cams = F.interpolate(F.relu(cams), image.shape[2:], mode="bilinear", align_corners=False)[0]
            for label in record.labels:
                psi = max_normalize(cams[label])
                batch = torch.cat([image, image * (1 - psi), image * (psi <= hard_threshold)])
                rows.append(torch.sigmoid(model(batch))[:, label].numpy())
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
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = erasure_probabilities(args.classifier, args.manifest, args.hard_threshold)
    print(json.dumps({**result, "hard_threshold": args.hard_threshold}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
