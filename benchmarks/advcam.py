"""Benchmark: AdvCAM's batched climb against the one-class-at-a-time reference loop.

Both run on the same classifier (a random ``small_resnet`` CAM classifier, or ``--classifier``
model.pt) and the same images (``--images`` random smooth images of ``--size`` px with 1–3
labels). The reference is the straightforward loop (one class, one flip, one image at a time;
``loss.backward()`` with the parameters' gradients computed, as plain training code and the AdvCAM
reference code do); ``--frozen-reference`` (on) also times it with the parameters frozen, which
isolates the batching gain. Timing: every variant ``--repeats`` times, interleaved in one spawned
process, the fastest run counts (other processes' load comes in bursts). Peak memory: each
variant alone in its own spawned process.

The timed runs are float32 and their maps are compared in float32 (``max_abs_diff``). The climb
amplifies rounding differences (batch-1 and batch-N convolutions round differently; a ReLU whose
input sits within rounding of 0 flips, and the normalised gradient step carries the difference
on), so after many steps the float32 maps of two correct implementations drift apart. The same
comparison in float64 on ``--float64-images`` images (``max_abs_diff_float64``) shows whether the
batched climb computes the same thing. The last line printed is a JSON object.

    .venv/bin/python benchmarks/advcam.py --threads 2 --images 6 --steps 27
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsss_steps.methods.advcam import AdvCamConfig, advcam_maps, advcam_maps_reference  # noqa: E402
from wsss_steps.networks.backbones import build_backbone  # noqa: E402
from wsss_steps.networks.classifier import CamClassifier  # noqa: E402
from wsss_steps.networks.inputs import resolve_device  # noqa: E402

NUM_CLASSES = 20


def make_model(args: argparse.Namespace, device: torch.device) -> CamClassifier:
    if args.classifier:
        from wsss_steps.networks.io import load_classifier

        model, _ = load_classifier(args.classifier, device)
        return model
    torch.manual_seed(args.seed)
    backbone = build_backbone("small_resnet", None, args.output_stride, pretrained=False)
    return CamClassifier(backbone, NUM_CLASSES).to(device).eval()


def make_images(args: argparse.Namespace, num_classes: int) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
    generator = torch.Generator().manual_seed(args.seed + 1)
    images, keys = [], []
    for _ in range(args.images):
        noise = torch.randn(1, 3, args.size // 8, args.size // 8, generator=generator)
        images.append(F.interpolate(noise, size=(args.size, args.size), mode="bicubic", align_corners=False))
        count = int(torch.randint(1, 4, (1,), generator=generator))
        keys.append(tuple(sorted(torch.randperm(num_classes, generator=generator)[:count].tolist())))
    return images, keys


def _setup(args: argparse.Namespace) -> tuple[CamClassifier, list[torch.Tensor], list[tuple[int, ...]], torch.device]:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = make_model(args, device)
    images, keys = make_images(args, model.num_classes)
    return model, [image.to(device) for image in images], keys, device


def _compute(variant: str, model: CamClassifier, images: list[torch.Tensor], keys: list[tuple[int, ...]],
             args: argparse.Namespace, steps: int, dtype: torch.dtype = torch.float32
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    config = AdvCamConfig.preset(args.preset, steps=steps, batch_budget=args.batch_budget)
    model = model.to(dtype)
    images = [image.to(dtype) for image in images]
    if variant == "batched":
        return advcam_maps(model, images, keys, config)
    model.requires_grad_(variant == "reference")  # the loop leaves requires_grad as it finds it
    return [advcam_maps_reference(model, image, k, config) for image, k in zip(images, keys, strict=True)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timing_worker(variants: tuple[str, ...], args: argparse.Namespace) -> dict[str, Any]:
    """In one spawned process: each variant timed ``--repeats`` times, the variants interleaved
    (so a burst of load from other processes hits all of them), plus the float64 check."""
    model, images, keys, device = _setup(args)
    for variant in variants:  # warm-up: one-time kernel selection and allocation
        _compute(variant, model, images[:1], keys[:1], args, steps=2)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    maps: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for _ in range(args.repeats):
        for variant in variants:
            _synchronize(device)
            start = time.perf_counter()
            result = _compute(variant, model, images, keys, args, args.steps)
            _synchronize(device)
            seconds[variant].append(time.perf_counter() - start)
            maps.setdefault(variant, result)
    maps64 = {}
    if args.float64_images:
        for variant in ("reference", "batched"):
            maps64[variant] = _compute(variant, model, images[:args.float64_images],
                                       keys[:args.float64_images], args, args.steps, torch.float64)
    extra = {"device_name": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {"seconds": seconds, "maps": maps, "maps64": maps64, "keys": keys, **extra}


def memory_worker(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """In its own spawned process: the peak memory of one variant over all images. A climb step
    frees its graph before the next, so a few steps reach the same peak as ``--steps``."""
    model, images, keys, device = _setup(args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _compute(variant, model, images, keys, args, steps=min(args.steps, 3))
    peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}  # Linux: KiB
    if device.type == "cuda":
        peak["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def max_abs_diff(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return max(float(np.abs(x - y).max()) for pair_a, pair_b in zip(a, b, strict=True)
               for x, y in zip(pair_a, pair_b, strict=True))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--steps", type=int, default=27)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-budget", type=int, default=16)
    parser.add_argument("--preset", default="paper", choices=("paper", "reference_code"))
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--classifier", help="a trained model.pt instead of a random small_resnet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64-images", type=int, default=2,
                        help="images also climbed in float64 by both, to compare without float32 drift (0: skip)")
    parser.add_argument("--frozen-reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the reference loop with the parameters frozen (on)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per variant (the min counts)")
    args = parser.parse_args(argv)
    args.float64_images = min(args.float64_images, args.images)

    context = multiprocessing.get_context("spawn")
    variants = ("reference", "reference_frozen", "batched") if args.frozen_reference else ("reference", "batched")
    peaks = {}
    for variant in variants:
        with context.Pool(1) as pool:
            peaks[variant] = pool.apply(memory_worker, (variant, args))
    with context.Pool(1) as pool:
        timing = pool.apply(timing_worker, (variants, args))
    best = {variant: min(times) for variant, times in timing["seconds"].items()}
    for variant in variants:
        print(f"{variant}: {', '.join(f'{t:.2f}' for t in timing['seconds'][variant])} s, "
              f"peak RSS {peaks[variant]['rss_mb']:.0f} MB", file=sys.stderr)
    reference, batched = timing["maps"]["reference"], timing["maps"]["batched"]
    device = resolve_device(args.device)
    summary: dict[str, Any] = {
        "reference_s": round(best["reference"], 3),
        "batched_s": round(best["batched"], 3),
        "speedup": round(best["reference"] / best["batched"], 2),
        "max_abs_diff": max_abs_diff(reference, batched),
        "mean_abs_diff": float(np.mean([np.abs(a[0] - b[0]).mean()
                                        for a, b in zip(reference, batched, strict=True)])),
        "max_abs_diff_float64": (max_abs_diff(timing["maps64"]["reference"], timing["maps64"]["batched"])
                                 if args.float64_images else None),
        "float64_images": args.float64_images,
        "peak_mem_mb": round(max(p["rss_mb"] for p in peaks.values()), 1),
        **{f"peak_mem_mb_{variant}": round(peaks[variant]["rss_mb"], 1) for variant in variants},
        "peak_mem_method": "peak RSS (resource.getrusage ru_maxrss) of a spawned process running only "
                           "that variant over all images (Python and torch included)",
        "timing_method": f"min of {args.repeats} runs per variant, interleaved in one process, "
                         "after a warm-up",
        "times_s": {variant: [round(t, 3) for t in times] for variant, times in timing["seconds"].items()},
        "images": args.images,
        "labels_per_image": [len(k) for k in timing["keys"]],
        "size": args.size,
        "steps": args.steps,
        "scales": list(AdvCamConfig().scales),
        "preset": args.preset,
        "batch_budget": args.batch_budget,
        "model": args.classifier or f"random small_resnet (output stride {args.output_stride})",
        "device": str(device) if device.type != "cuda" else f"{device} ({timing.get('device_name', '')})",
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }
    if args.frozen_reference:
        summary["reference_frozen_s"] = round(best["reference_frozen"], 3)
        summary["speedup_vs_frozen_reference"] = round(best["reference_frozen"] / best["batched"], 2)
    if "gpu_mb" in peaks["batched"]:
        summary.update({f"peak_gpu_mb_{variant}": round(peaks[variant]["gpu_mb"], 1) for variant in variants})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
