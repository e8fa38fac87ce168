"""Renders one image's maps from any stage's HDF5 file as an overlay PNG.

What it computes, and why: `wsss_steps.report.overlays`.

Example::

    python -m wsss_steps.inspect results/synth/seeds/cam/cam/maps.h5 train_000003 \
        --manifest results/synth/data/train.csv --out train_000003.png
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2

from wsss_steps.cli import step_parser
from wsss_steps.data.images import read_image, read_label_mask
from wsss_steps.data.manifest import read_manifest, validate_image_id
from wsss_steps.report.overlays import render_maps
from wsss_steps.store.maps import MapReader

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("maps", help="an HDF5 map file of any stage")
    parser.add_argument("image_id")
    parser.add_argument("--manifest", required=True, help="the split manifest CSV (image and mask paths)")
    parser.add_argument("--map", dest="map_name", help="only this dataset of the image group (default: all)")
    parser.add_argument("--out", help="PNG path (default: <image_id>.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    image_id = validate_image_id(args.image_id)
    manifest = read_manifest(args.manifest)
    record = manifest.record(image_id)
    with MapReader(args.maps) as reader:
        maps = reader.read(image_id)
    if args.map_name and args.map_name not in maps:
        raise SystemExit(f"{args.maps}: image {image_id!r} has no map {args.map_name!r}; it has {sorted(maps)}")
    image = read_image(record.image_path)
    mask = read_label_mask(record.mask_path) if record.mask_path else None
    sheet = render_maps(image, maps, manifest.class_names, mask, args.map_name)
    out = Path(args.out or f"{image_id}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
