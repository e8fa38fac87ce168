"""Generates the project's embedded default dataset: synthetic multi-label scenes in the VOC layout.

``python -m wsss_steps.generate_dataset --out DIR`` writes what `VocLayoutDataset` reads:
``JPEGImages/{id}.jpg``, ``SegmentationClass/{id}.png`` (VOC palette, 0 = background, k = line k
of ``classes.txt``, 255 = void), ``ImageSets/Segmentation/{train,val}.txt``, ``classes.txt``,
``labels.csv``, ``boxes.csv`` (one row per object instance) and ``dataset.json`` (settings and
statistics). Same settings give byte-identical files; every image has its own random generator
seeded from (seed, split, index), so no image depends on another.

The scenes are built to show the problem WSSS methods address, not to be easy:
- every object has a small, saturated, class-specific *part* (6-10 % of its area by default) that
  alone identifies its class, and a larger *body* whose shape and texture are class-specific but
  whose colours and textures are shared with other classes and with the background clutter. A
  classifier gets most of its evidence from the part, so CAMs sit on the part and miss the body
  (as VOC CAMs sit on faces and wheels); closing that gap is what the seed methods are for;
- ``chair`` and ``table`` appear together in most images holding either, standing side by side,
  a context bias (like boat and water) that makes the CAM of one leak onto the other;
- textured, cluttered backgrounds (noise, gradients, blobs, stripes, sticks, and now and then a
  faded part-less copy of a class body) in body colours, so "not background" is no shortcut;
- objects are large, as in VOC (half size 0.24-0.40 of the image side; about a quarter of the
  pixels are foreground, VOC's share): with smaller objects a stride-8 CAM blob was as large as
  the object, and the seeds' errors were blur rather than missed bodies;
- with ``part_prob`` < 1 some objects hide their part and only their body tells the class;
- objects are scaled, rotated, mirrored, overlap (later ones occlude earlier ones; masks and boxes
  follow what is visible) and may be cut by the image border; masks carry a ~2 px void band along
  every instance boundary, as VOC masks do.
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
