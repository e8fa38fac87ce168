"""Seeds of one shard of a split into HDF5: per-class localisation maps of every image's labels.

Methods (``--method``):

- ``cam``: multi-scale + flip CAMs (docs/methods.md §1, `wsss_steps.methods.cams`);
- ``advcam``: CAMs of anti-adversarially climbed images (docs/methods.md §2, `wsss_steps.methods.advcam`,
  whose docstring lists every option and the reference code's differences);
- ``advcam_sal``: AdvCAM restricted by a saliency map's background (``--saliency``, required).

Every method writes ``cam`` (K, H, W), ``cam_stride4`` (K, ⌈H/4⌉, ⌈W/4⌉) and ``keys`` per image,
max-normalised, one map per label class. A killed shard resumes from its ``.partial`` file.
``--precision bf16|fp16`` runs the classifier under autocast (AdvCAM: its forward passes; the
climbing step stays float32) and ``--channels-last`` in that memory format; both are recorded in
the file's params (nothing at the defaults).

Example::

    python -m wsss_steps.seeds --method advcam --classifier results/synth/classifier/cam/model.pt \\
        --manifest results/synth/data/train.csv --shard 0 --num-shards 2 --out shard-0-of-2.h5 \\
        --scales 1.0 0.5 1.5 2.0
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from wsss_steps.cli import (
    add_run_arguments,
    add_shard_arguments,
    check_shard,
    start_run,
    step_parser,
)
from wsss_steps.data.manifest import ImageRecord, read_manifest
from wsss_steps.methods.advcam import (
    ATTRIBUTIONS,
    GRAD_NORMALIZATIONS,
    LOGITS,
    OTHER_CLASSES,
    PENALTY_SCALES,
    PRESETS,
    SMALL_SCALE_SCHEDULES,
    AdvCamConfig,
    AdvCamSeeds,
)
from wsss_steps.methods.cams import CamSeeds
from wsss_steps.networks.io import load_classifier, model_identity
from wsss_steps.networks.numerics import Numerics
from wsss_steps.store.maps import MapReader, shard_ids
from wsss_steps.store.shards import write_seed_shard

log = logging.getLogger(__name__)

METHODS = ("cam", "advcam", "advcam_sal")
CAM_SCALES = (1.0, 0.5, 1.5, 2.0)  # docs/methods.md §1 (IRN's and AdvCAM's test scales)
ADVCAM_FIELDS = ("steps", "step_size", "penalty_weight", "mask_threshold", "flip", "other_classes",
                 "logits", "attribution", "penalty_scale", "merge_flips_in_loss", "grad_normalization",
                 "clamp_to_input_range", "small_scale_schedule", "batch_budget", "batch_pixels",
                 "saliency_threshold")


def _scales(values: Sequence[str]) -> tuple[float, ...]:
    return tuple(float(v) for token in values for v in token.split(",") if v)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(__name__, __doc__)
    files = add_shard_arguments(parser, "output shard file (.h5); resumes its .partial")
    files.add_argument("--classifier", required=True, help="trained CAM classifier (model.pt)")
    files.add_argument("--saliency", help="saliency map file (groups with 'saliency' (H, W) in [0, 1]); "
                       "advcam_sal only")
    seeds = parser.add_argument_group("seeds")
    seeds.add_argument("--method", required=True, choices=METHODS, help="seed method (stored in the file)")
    seeds.add_argument("--scales", nargs="+", default=None,
                       help="e.g. 1.0 0.5 1.5 2.0 or 1.0,0.5,1.5,2.0 (default: 1.0 0.5 1.5 2.0)")
    seeds.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="also use the horizontal flip (default: yes)")
    adv = parser.add_argument_group("AdvCAM (advcam, advcam_sal); defaults: the preset's")
    adv.add_argument("--preset", choices=PRESETS, default="paper",
                     help="paper (default) or reference_code (all reference-code options on); "
                          "the options below override it")
    adv.add_argument("--steps", type=int, default=None, help="T, climbing steps (27)")
    adv.add_argument("--step-size", type=float, default=None, help="ξ (0.08)")
    adv.add_argument("--penalty-weight", type=float, default=None, help="λ (7)")
    adv.add_argument("--mask-threshold", type=float, default=None, help="τ (0.5)")
    adv.add_argument("--other-classes", choices=OTHER_CLASSES, default=None,
                     help="logits suppressed: all classes ≠ c (paper, default) or the image's other labels")
    adv.add_argument("--logits", choices=LOGITS, default=None,
                     help="plain (default) or relu_gap = GAP(ReLU(CAM)) (reference code)")
    adv.add_argument("--attribution", choices=ATTRIBUTIONS, default=None,
                     help="cam (default) or gradcam (the reference code's map)")
    adv.add_argument("--penalty-scale", choices=PENALTY_SCALES, default=None,
                     help="reference (default: λ on the reference code's attribution scale, which λ = 7 was "
                          "tuned on) or none (λ on the raw CAM: needs λ ≈ 7/(2·D⁺_c); wsss_steps.methods.advcam)")
    adv.add_argument("--merge-flips-in-loss", action=argparse.BooleanOptionalAction, default=None,
                     help="mask and penalty on the flip-merged map (reference code)")
    adv.add_argument("--grad-normalization", choices=GRAD_NORMALIZATIONS, default=None,
                     help="per_sample (default) or flip_pair (reference code)")
    adv.add_argument("--clamp-to-input-range", action=argparse.BooleanOptionalAction, default=None,
                     help="clamp x^t to the range of x^{t-1} (reference code)")
    adv.add_argument("--small-scale-schedule", choices=SMALL_SCALE_SCHEDULES, default=None,
                     help="full (default), half (T//2 steps, ×2 weight below scale 1) or "
                          "half_reference (T//2 steps, equal weights, as the reference computes)")
    adv.add_argument("--batch-budget", type=int, default=None,
                     help="max samples per forward (16); changes the maps by float rounding only")
    adv.add_argument("--batch-pixels", type=int, default=None,
                     help="max input pixels per forward (262144, at least one climb); changes the "
                          "maps by float rounding only")
    adv.add_argument("--saliency-threshold", type=float, default=None,
                     help="δ: background is sal < δ (0.10)")
    adv.add_argument("--reference", action="store_true",
                     help="use the one-class-at-a-time reference loop instead of the batched climb "
                     "(fp32 only)")
    add_run_arguments(parser, numerics=True)
    return parser


def advcam_config(args: argparse.Namespace) -> AdvCamConfig:
    """The preset, with every option given on the command line replacing its value."""
    overrides: dict[str, Any] = {name: getattr(args, name) for name in ADVCAM_FIELDS
                                 if getattr(args, name) is not None}
    if args.scales is not None:
        overrides["scales"] = _scales(args.scales)
    return AdvCamConfig.preset(args.preset, **overrides)


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    check_shard(args, "seeds")
    if args.method == "advcam_sal" and not args.saliency:
        parser.error("--method advcam_sal needs --saliency (the saliency map file)")
    if args.method != "advcam_sal" and args.saliency:
        parser.error(f"--saliency is for --method advcam_sal, not {args.method}")
    if args.method == "cam":
        given = [f"--{n.replace('_', '-')}" for n in (*ADVCAM_FIELDS, "reference")
                 if n != "flip" and getattr(args, n) not in (None, False)]
        if given or args.preset != "paper":
            parser.error(f"--method cam takes no AdvCAM options ({', '.join(given) or '--preset'})")
    if args.reference and not Numerics.from_args(args).is_default:
        parser.error("--reference runs the fp32 loop: it takes no --precision or --channels-last")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(args, parser)
    device = start_run(args)
    numerics = Numerics.from_args(args)
    model, meta = load_classifier(args.classifier, device)
    model.eval()
    numerics.prepare(model)
    manifest = read_manifest(args.manifest)
    class_names = tuple(meta.get("class_names", manifest.class_names))
    if class_names != manifest.class_names or model.num_classes != manifest.num_classes:
        raise SystemExit(f"seeds: classifier {args.classifier} was trained on classes {list(class_names)} "
                         f"({model.num_classes}), manifest {args.manifest} has {list(manifest.class_names)}")
    saliency: MapReader | None = None
    compute: Any
    if args.method == "cam":
        scales = _scales(args.scales) if args.scales is not None else CAM_SCALES
        flip = True if args.flip is None else args.flip
        compute = CamSeeds(model, device, scales, flip, numerics)
        params: Mapping[str, Any] = {"scales": list(scales), "flip": flip}
    else:
        config = advcam_config(args)
        ids = shard_ids(manifest.ids, args.shard, args.num_shards)
        if args.saliency:
            saliency = MapReader(args.saliency)
            saliency.require(ids)
        records: list[ImageRecord] = [manifest.record(i) for i in ids]
        compute = AdvCamSeeds(model, records, config, device, saliency, reference=args.reference,
                              numerics=numerics)
        params = config.params(saliency=saliency is not None)
        if saliency is not None:  # which saliency restricted the climb: part of the maps' identity
            params = {**params, "saliency": {"method": str(saliency.attrs.get("method", "")),
                                             "params": saliency.params}}
    # Identity of what the maps are computed from: a partial shard of another classifier or other
    # images is started over, not continued (`store.maps.MapWriter`).
    # The precision and memory format: only where not the defaults (maps made before keep theirs).
    params = {**params, "classifier": model_identity(args.classifier, meta), "images": manifest.content_digest(),
              **numerics.params()}
    try:
        computed = write_seed_shard(manifest, args.shard, args.num_shards, args.out, compute, args.method,
                                    params)
    finally:
        if saliency is not None:
            saliency.close()
    log.info("%s: %d image(s) computed into %s", args.method, computed, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
