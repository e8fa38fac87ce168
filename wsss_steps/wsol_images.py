"""Writes the WSOL images of a split: its images with exactly one class and a box of that class
(docs/methods.md §8: localisation scores one object class per image; on MSRC, its "single-object" split).

The images left out are counted in the log, by reason, with their first ids; a split left without
any image is refused. ``--images all`` keeps every image and refuses the split where one has
several classes or no box (a dataset made for WSOL, such as CUB or the generated single-object data).

Example::

    python -m wsss_steps.wsol_images --manifest results/msrc/data/val.csv \\
        --out results/msrc/data/wsol/val.csv
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.data.manifest import DatasetError, Manifest, read_manifest, write_manifest

log = logging.getLogger("wsss_steps.wsol_images")
IMAGE_CHOICES = ("single_label", "all")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--manifest", required=True, type=Path, help="the split's manifest (prepare_data)")
    parser.add_argument("--out", required=True, type=Path, help="the WSOL manifest CSV (classes.txt beside it)")
    parser.add_argument("--images", choices=IMAGE_CHOICES, default="single_label",
                        help="single_label: keep the images with one class and a box of it; all: "
                        "refuse a split where an image has not (default: %(default)s)")
    return parser


def wsol_manifest(manifest: Manifest, images: str = "single_label") -> tuple[Manifest, dict[str, list[str]]]:
    """The WSOL images of ``manifest`` and the ids left out, by reason."""
    left_out: dict[str, list[str]] = {"several classes": [], "no box of its class": []}
    kept = Manifest(manifest.dataset, manifest.split, manifest.class_names)
    for record in manifest.records:
        if len(record.labels) != 1:
            left_out["several classes"].append(record.image_id)
        elif not any(box.label == record.labels[0] for box in record.boxes):
            left_out["no box of its class"].append(record.image_id)
        else:
            kept.records.append(record)
    problems = {reason: ids for reason, ids in left_out.items() if ids}
    if images == "all" and problems:
        raise DatasetError(f"split {manifest.split!r} of {manifest.dataset!r}: every image must have one class and "
                           f"a box of it (wsol.images: all); "
                           + "; ".join(f"{reason}: {len(ids)} (first: {ids[:5]})" for reason, ids in problems.items()))
    if not kept.records:
        raise DatasetError(f"split {manifest.split!r} of {manifest.dataset!r} has no image with one class and a box "
                           "of it: nothing to localise (does the dataset have boxes.csv?)")
    return kept, problems


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    manifest = read_manifest(args.manifest)
    if args.out.stem != manifest.split:  # write_manifest names the file after the split
        raise SystemExit(f"wsol_images: --out must be named {manifest.split}.csv (the split's name), not {args.out.name}")
    try:
        kept, left_out = wsol_manifest(manifest, args.images)
    except DatasetError as error:
        raise SystemExit(f"wsol_images: {args.manifest}: {error}") from error
    for reason, ids in left_out.items():
        log.info("left out %d image(s) of %s with %s (first: %s)", len(ids), args.manifest, reason, ids[:10])
    write_manifest(kept, args.out.parent)
    log.info("%d of %d images of split %r are WSOL images: %s", len(kept.records), len(manifest.records),
             manifest.split, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
