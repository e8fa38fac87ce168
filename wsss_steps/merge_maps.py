"""Merges the HDF5 shards of a stage into one file, checking every image of the split is there.

Example::

    python -m wsss_steps.merge_maps --manifest results/synth/data/train.csv \\
        --out results/synth/seeds/cam/cam/maps.h5 shard-0-of-2.h5 shard-1-of-2.h5
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from wsss_steps.cli import setup_logging, step_parser
from wsss_steps.data.manifest import read_manifest
from wsss_steps.store.maps import merge_shards

log = logging.getLogger("wsss_steps.merge_maps")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    parser.add_argument("shards", nargs="+", help="complete shard files")
    parser.add_argument("--manifest", required=True, help="the split's manifest: every id must be present")
    parser.add_argument("--out", required=True, help="merged file (.h5)")
    parser.add_argument("--link", action="store_true",
                        help="external links to the shards instead of copies (no extra disk; keep the shards)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    manifest = read_manifest(args.manifest)
    merge_shards(args.shards, args.out, manifest.ids, link=args.link)
    log.info("merged %d shard(s), %d images into %s", len(args.shards), len(manifest.ids), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
