"""Checks a dataset split and writes its manifest (classes.txt + {split}.csv) for later steps.

Every image and mask is decoded in full: a missing, damaged or truncated file, an image above
``--max-image-pixels``, a mask value outside the classes, an id with path separators, an image
without a label, a second labels.csv row for an image, an unknown class name or labels that
disagree with the image's mask (``--label-mask-check``) stop here, with
every problem listed, before any training starts. Each record carries the sha256 of its image and
mask bytes (the ``digest`` column): models and maps record the split's content, so replacing an
image's pixels under the same id makes the next run start over instead of resuming.
``{split}.sources.json`` records each source file's stat and sha256: the workflow reruns this step
when a file's content changes, whatever its modification time (`wsss_steps.data.sources`).

Example::

    python -m wsss_steps.prepare_data --kind voc2012 --root data/VOCdevkit/VOC2012 \\
        --name voc12 --split train_aug --out-dir results/voc12/data
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.data.adapters import DATASET_KINDS, open_dataset
from wsss_steps.data.images import DEFAULT_MAX_IMAGE_PIXELS
from wsss_steps.data.manifest import write_manifest
from wsss_steps.data.manifest_builder import LABEL_MASK_CHECKS, build_manifest
from wsss_steps.data.sources import record_sources

log = logging.getLogger("wsss_steps.prepare_data")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--kind", required=True, choices=sorted(DATASET_KINDS))
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--name", required=True, help="dataset name used in results/")
    parser.add_argument("--split", required=True, help="split name (ImageSets/Segmentation/<split>.txt)")
    parser.add_argument("--out-dir", required=True, help="folder for classes.txt and <split>.csv")
    parser.add_argument("--labels-csv", help="labels CSV (custom datasets; default <root>/labels.csv)")
    parser.add_argument("--label-source", default="masks", choices=["masks", "xml"],
                        help="voc2012: image-level labels from the masks (as IRN) or from Annotations/")
    parser.add_argument("--label-mask-check", default="strict", choices=LABEL_MASK_CHECKS,
                        help="labels from labels.csv or VOC's XML against each mask: strict, allow_void_only "
                             "(a label whose object is void in the mask) or none (default: %(default)s)")
    parser.add_argument("--require-masks", action="store_true",
                        help="every image must have a ground-truth mask (evaluation splits)")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="larger images are refused, by name (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    dataset = open_dataset({"kind": args.kind, "root": args.root, "name": args.name,
                            "labels_csv": args.labels_csv, "label_source": args.label_source})
    manifest = build_manifest(dataset, args.split, require_masks=args.require_masks,
                              max_image_pixels=args.max_image_pixels, mask_dir=Path(args.out_dir) / "masks",
                              label_mask_check=args.label_mask_check)
    left_out = getattr(dataset, "left_out", {}).get(args.split, [])
    if left_out:  # COCO: images without any object have no image-level label
        log.warning("%s: %d image(s) without any annotated object are left out: %s", args.split, len(left_out),
                    " ".join(left_out))
    path = write_manifest(manifest, args.out_dir)
    record_sources(dataset.source_files(args.split), path)
    log.info("%s: %d images, %d classes → %s", args.split, len(manifest.records), manifest.num_classes, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
