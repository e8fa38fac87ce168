"""Exports label maps of an HDF5 map file as VOC palette PNGs (what the PASCAL VOC evaluation
server accepts: one ``<id>.png`` per image, palette indices = mask numbering, 0 = background).

Every image of the manifest must hold the label map (H, W) with values in 0..C; anything else is
an error naming the image and file. Example::

    python -m wsss_steps.export_png --maps results/synth/segmentation/cam/cam/predictions.h5 \\
        --map-name mask_crf --manifest results/synth/data/val.csv --out results/synth/segmentation/cam/cam/png_crf
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.data.images import write_label_mask
from wsss_steps.data.manifest import Manifest, read_manifest
from wsss_steps.store.maps import MapReader

log = logging.getLogger("wsss_steps.export_png")


def export_label_maps(manifest: Manifest, maps_path: str | Path, map_name: str, out_dir: str | Path) -> int:
    """Writes ``out_dir/<id>.png`` for every image of the manifest; returns the count."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with MapReader(maps_path) as reader:
        reader.require(manifest.ids)
        for record in manifest.records:
            data = reader.read(record.image_id)
            if map_name not in data:
                raise ValueError(f"image {record.image_id!r} in {maps_path} has no dataset {map_name!r} "
                                 f"(it holds {sorted(data)})")
            labels = np.asarray(data[map_name])
            if labels.ndim != 2 or (labels.size and (labels.min() < 0 or labels.max() > manifest.num_classes)):
                raise ValueError(f"image {record.image_id!r} in {maps_path}: {map_name!r} is not an (H, W) label "
                                 f"map with values in 0..{manifest.num_classes}")
            write_label_mask(out_dir / f"{record.image_id}.png", labels)
    return len(manifest.records)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("--maps", required=True, type=Path, help="HDF5 map file holding label maps")
    parser.add_argument("--map-name", default="mask", help="dataset of each image group (default: %(default)s)")
    parser.add_argument("--manifest", required=True, type=Path, help="split manifest CSV")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    count = export_label_maps(read_manifest(args.manifest), args.maps, args.map_name, args.out)
    log.info("wrote %d PNGs to %s", count, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
