"""Merges the HDF5 shards of a stage into one file, checking every image of the split is there.

Example::

    python -m wsss_steps.merge_maps --manifest results/synth/data/train.csv \\
        --out results/synth/seeds/cam/cam/maps.h5 shard-0-of-2.h5 shard-1-of-2.h5
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from wsss_steps.datasets import read_manifest
from wsss_steps.logs import setup_logging
from wsss_steps.map_store import merge_shards

log = logging.getLogger("wsss_steps.merge_maps")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wsss_steps.merge_maps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", help="complete shard files")
    parser.add_argument("--manifest", required=True, help="the split's manifest: every id must be present")
    parser.add_argument("--out", required=True, help="merged file (.h5)")
    parser.add_argument("--link", action="store_true",
                        help="external links to the shards instead of copies (no extra disk; keep the shards)")
    args = parser.parse_args(argv)
    setup_logging()
    manifest = read_manifest(args.manifest)
    merge_shards(args.shards, args.out, manifest.ids, link=args.link)
    log.info("merged %d shard(s), %d images into %s", len(args.shards), len(manifest.ids), args.out)


if __name__ == "__main__":
    main()
