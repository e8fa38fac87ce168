"""Writes the generated default dataset (VOC layout) into ``--out``: a new or empty folder, or an
earlier output of this generator.

What it computes, and why: `wsss_steps.data.generated`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wsss_steps.cli import step_parser
from wsss_steps.data.generated import (
    CLASS_SPECS,
    SPLITS,
    GeneratorError,
    GeneratorSettings,
    generate_dataset,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Command line

_HELP = {
    "num_train": "images in the train split",
    "num_val": "images in the val split",
    "image_size": "side of the square images, in pixels",
    "num_classes": f"foreground classes, the first N of {', '.join(s.name for s in CLASS_SPECS)}",
    "min_objects": "fewest objects per image",
    "max_objects": "most objects per image",
    "seed": "random seed; same settings and seed give byte-identical files",
    "single_object": "exactly one object per image (the WSOL variant; classes balanced)",
    "pair_prob": "probability that an image with chair or table also holds the other",
    "duplicate_prob": "probability that an extra object repeats a class already in the image",
    "part_fraction_min": "smallest part area as a fraction of its object's area",
    "part_fraction_max": "largest part area as a fraction of its object's area",
    "part_prob": "probability that an object shows its part (else only its body tells the class)",
    "object_scale_min": "smallest object half size, as a fraction of the image size",
    "object_scale_max": "largest object half size, as a fraction of the image size",
    "min_visible": "fraction of each object that must stay unoccluded",
    "clutter_min": "fewest background clutter items per image",
    "clutter_max": "most background clutter items per image",
    "decoy_prob": "probability of a faded part-less class body in the background",
    "texture_strength": "contrast of the body textures",
    "color_jitter": "per-image brightness/contrast/channel gain jitter",
    "noise_std": "standard deviation of the pixel noise, in grey levels",
    "jpeg_quality": "JPEG quality of the images",
}


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(
        __name__, "Generate the synthetic multi-label WSSS dataset (VOC layout: JPEGImages, "
                    "SegmentationClass, ImageSets/Segmentation, classes.txt, labels.csv, boxes.csv, "
                    "dataset.json). Each object has a small saturated class-specific part and a larger, "
                    "less distinctive body; chair and table mostly appear together.")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: new, empty, or an earlier output of this generator (replaced)")
    for item in dataclasses.fields(GeneratorSettings):
        flag = "--" + item.name.replace("_", "-")
        if item.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=item.default,
                                help=_HELP[item.name])
        else:
            kind = {"int": int, "float": float}[str(item.type)]
            parser.add_argument(flag, type=kind, default=item.default,
                                help=f"{_HELP[item.name]} (default: {item.default})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = GeneratorSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GeneratorSettings)})
        start = time.perf_counter()
        info = generate_dataset(args.out, settings)
    except GeneratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{info['splits'][s]['images']} {s}" for s in SPLITS)
    print(f"wrote {counts} images ({len(info['classes'])} classes) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
