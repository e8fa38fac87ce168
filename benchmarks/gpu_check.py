"""The device check: what a GPU node must show before a VOC or COCO run is trusted to it.

Stages (each prints one JSON line; the last line is all of them together, also written to
``--out``/gpu_check.json):

1. ``environment``: torch, its CUDA build, the GPU; stops here (exit 2) when CUDA is unusable.
2. ``tiny_workflow``: the tests' tiny workflow (tests/workflow_helpers.TINY) once on the CPU and once
   with ``device: cuda, gpu_available: true``; the summaries compared row by row. Training on a GPU
   rounds differently (cuDNN's kernels, atomics), and two epochs on 24 images amplify it, so the
   tolerance is 0.05 absolute on every score in [0, 1] (mIoU, mAP, accuracies); the largest
   difference is reported with the row it belongs to.
3. ``cam_parity``: the CPU run's classifier, its multi-scale CAMs of the val images computed on the
   CPU and on the GPU in float32: largest difference of the max-normalised maps (tolerance 1e-3).
4. ``advcam``: benchmarks/advcam.py on the GPU (batched climb vs the one-class loop, images/s).
5. ``random_walk``: benchmarks/random_walk.py on the GPU at VOC's size (375 × 500; dense reference
   and sparse walk).
6. ``msrc_2x``: MSRC-v2 (``--msrc``; skipped where absent) with configs/msrc.yaml at twice its image
   size (training resize and crop ×2, seeds at scale 2: the paper's ~500 px), CAM, AdvCAM and P-NOC
   seeds (P-NOC from configs/msrc_variants.yaml), seeds mIoU and each job's time. ``--msrc-every K``
   keeps every K-th image of each split to fit a shorter lease.

Not in it (its time does not fit the 8 minutes): the weight map at the paper's number of image-steps.

    bash benchmarks/gpu_check.sh                      # on the GPU node, from the repository root
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick   # this script's own smoke run

``--device cpu --quick`` runs every stage's code on the CPU at toy sizes (the "GPU" run is then a
second CPU run); it checks the script, not a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.workflow_helpers import TINY  # noqa: E402  (the tiny workflow the tests run)

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
SCORE_TOLERANCE = 0.05
CAM_TOLERANCE = 1e-3


def emit(results: dict[str, Any], stage: str, value: dict[str, Any]) -> None:
    results[stage] = value
    print(json.dumps({stage: value}), flush=True)


def run(command: list[str], cwd: Path, timeout: float) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} … failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout


def snakemake(workdir: Path, config: dict[str, Any], cores: int, gpus: int, timeout: float) -> float:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    seconds, _ = run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                      str(workdir), "--cores", str(cores), "--resources", f"gpu={gpus}"], workdir, timeout)
    return seconds


def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
                            "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if device == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_memory_gb=round(properties.total_memory / 2**30, 1),
                    capability=f"{properties.major}.{properties.minor}", gpus=torch.cuda.device_count())
    return info


def summary_scores(path: Path) -> dict[tuple[str, ...], float]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    scores = {}
    for row in rows:
        value = float(row["value"])
        if row["metric"] in {"miou", "map", "top1_accuracy", "gt_known_loc", "top1_loc", "maxboxacc", "pxap",
                             "fg_iou", "precision", "recall"} and 0.0 <= value <= 1.0:
            scores[(row["dataset"], row["stage"], row.get("classifier", ""), row["method"], row["metric"])] = value
    return scores


def tiny_workflow(work: Path, device: str, cores: int, timeout: float) -> dict[str, Any]:
    runs = {}
    for name, settings in (("cpu", {"device": "cpu", "gpu_available": False}),
                           ("gpu", {"device": device, "gpu_available": device == "cuda"})):
        workdir = work / f"tiny_{name}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        runs[name] = (workdir, snakemake(workdir, {**TINY, **settings}, cores, 1, timeout))
    cpu = summary_scores(runs["cpu"][0] / "results" / "summary.csv")
    gpu = summary_scores(runs["gpu"][0] / "results" / "summary.csv")
    differences = {key: abs(cpu[key] - gpu[key]) for key in cpu.keys() & gpu.keys()}
    worst = max(differences, key=differences.get) if differences else None
    return {"cpu_s": round(runs["cpu"][1], 1), "gpu_s": round(runs["gpu"][1], 1), "rows": len(differences),
            "rows_only_in_one": sorted("/".join(k) for k in cpu.keys() ^ gpu.keys()),
            "max_abs_diff": round(differences[worst], 4) if worst else None,
            "worst_row": "/".join(worst) if worst else None, "tolerance": SCORE_TOLERANCE,
            "passed": bool(differences) and not (cpu.keys() ^ gpu.keys())
            and max(differences.values()) <= SCORE_TOLERANCE}


def cam_parity(tiny_cpu_run: Path, device: str, scales: tuple[float, ...]) -> dict[str, Any]:
    import torch

    from wsss_steps.data.images import read_image
    from wsss_steps.data.manifest import read_manifest
    from wsss_steps.methods.cams import multiscale_cams
    from wsss_steps.networks.inputs import image_to_tensor
    from wsss_steps.networks.io import load_classifier

    results = tiny_cpu_run / "results" / TINY["dataset"]["name"]
    manifest = read_manifest(results / "data" / "val.csv")
    model_path = results / "classifier" / "cam" / "model.pt"
    worst = 0.0
    for record in manifest.records:
        maps = []
        for name in ("cpu", device):
            model, _ = load_classifier(model_path, name)
            image = image_to_tensor(read_image(record.image_path), name)
            with torch.no_grad():
                maps.append(multiscale_cams(model, image, record.labels, scales)[0])
        worst = max(worst, float(np.abs(maps[0] - maps[1]).max()) if maps[0].size else 0.0)
    return {"images": len(manifest.records), "max_abs_diff": worst, "tolerance": CAM_TOLERANCE,
            "passed": worst <= CAM_TOLERANCE}


def last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def msrc_slice(source: Path, root: Path, every: int) -> Path:
    """MSRC-v2's folders linked, its split files thinned to every ``every``-th image."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass"):
        (root / name).symlink_to(source.resolve() / name, target_is_directory=True)
    for name in ("classes.txt", "labels.csv", "boxes.csv"):
        if (source / name).is_file():
            shutil.copy(source / name, root / name)
    for split in ("train", "val"):
        ids = (source / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids[::every]) + "\n")
    return root


def msrc_config(root: Path, device: str, quick: bool) -> dict[str, Any]:
    """configs/msrc.yaml at twice the image size: CAM, AdvCAM and P-NOC seeds, scored (no dCRF)."""
    config = yaml.safe_load((ROOT / "configs" / "msrc.yaml").read_text())
    variants = yaml.safe_load((ROOT / "configs" / "msrc_variants.yaml").read_text())
    config["dataset"]["root"] = str(root)
    config.update(device=device, gpu_available=device == "cuda", shards=1)
    lite0, p_noc = config["classifiers"]["lite0"], variants["classifiers"]["p_noc"]
    for settings in (lite0, p_noc):
        settings["resize_long"] = [2 * v for v in settings["resize_long"]]
        settings["crop"] = 2 * settings["crop"]
        if quick:
            settings["epochs"] = 1
    config["classifiers"] = {"lite0": lite0, "p_noc": p_noc}
    config["seeds"] = {"cam": {**config["seeds"]["cam"], "scales": [2.0]},
                       "advcam": {**config["seeds"]["advcam"], "scales": [2.0], **({"steps": 2} if quick else {})}}
    config["experiments"] = [{"classifier": "lite0", "seeds": "cam", "pseudo_masks": False},
                             {"classifier": "lite0", "seeds": "advcam", "pseudo_masks": False},
                             {"classifier": "p_noc", "seeds": "cam", "pseudo_masks": False}]
    for key in ("saliency", "weight_maps"):
        config.pop(key, None)
    config["wsol"] = {**config["wsol"], "experiments": []}
    config["evaluation"]["seeds"]["crf"] = False
    return config


def msrc_2x(source: Path, work: Path, device: str, every: int, cores: int, quick: bool,
            timeout: float) -> dict[str, Any]:
    if not (source / "ImageSets" / "Segmentation" / "train.txt").is_file():
        return {"skipped": f"MSRC-v2 is not at {source} (copy ../shared/data/msrc into the checkout and pass --msrc)"}
    workdir = work / "msrc_2x"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    root = msrc_slice(source, workdir / "msrc", every)
    seconds = snakemake(workdir, msrc_config(root, device, quick), cores, 1, timeout)
    with (workdir / "results" / "summary.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["stage"] == "seeds" and r["metric"] == "miou"]
    seeds = {f"{r['classifier']}/{r['method']}": round(float(r["value"]), 4) for r in rows}
    jobs = {}
    for path in sorted((workdir / "results" / "msrc" / "benchmarks").glob("*.tsv")):
        if path.stem.startswith(("train_classifier", "seeds_")):
            jobs[path.stem] = float(path.read_text().splitlines()[1].split("\t")[0])
    train_images = len((root / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    return {"seconds": round(seconds, 1), "train_images": train_images, "seeds_miou": seeds, "job_s": jobs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsss_gpu_check"))
    parser.add_argument("--msrc", type=Path, default=ROOT.parent / "shared" / "data" / "msrc")
    parser.add_argument("--msrc-every", type=int, default=1)
    parser.add_argument("--cores", type=int, default=min(os.cpu_count() or 1, 16))
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks this script, not a GPU")
    parser.add_argument("--skip", nargs="*", default=[], help="stages to leave out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    emit(results, "environment", environment(args.device))
    if args.device == "cuda" and not results["environment"]["cuda_available"]:
        print("CUDA is not usable here: nothing else is checked (docs/cluster.md, older drivers)", file=sys.stderr)
        return 2
    stages = [
        ("tiny_workflow", lambda: tiny_workflow(args.work, args.device, args.cores, 900)),
        ("cam_parity", lambda: cam_parity(args.work / "tiny_cpu", args.device, (1.0, 0.5))),
        ("advcam", lambda: last_json(run(
            [sys.executable, "benchmarks/advcam.py", "--device", args.device, "--threads", str(args.cores),
             *(["--images", "2", "--steps", "3", "--size", "64", "--repeats", "1", "--float64-images", "0"]
               if args.quick else ["--images", "8", "--steps", "27", "--size", "320", "--repeats", "2"])],
            ROOT, 600)[1])),
        ("random_walk", lambda: last_json(run(
            [sys.executable, "benchmarks/random_walk.py", "--device", args.device,
             *(["--height", "60", "--width", "80"] if args.quick else [])], ROOT, 600)[1])),
        ("msrc_2x", lambda: msrc_2x(args.msrc, args.work, args.device, 40 if args.quick else args.msrc_every,
                                    args.cores, args.quick, 1800)),
    ]
    for name, stage in stages:
        if name in args.skip:
            continue
        started = time.perf_counter()
        try:
            value = stage()
        except Exception as error:  # one failed stage must not hide the others' figures
            value = {"error": str(error)[-2000:]}
        value["stage_s"] = round(time.perf_counter() - started, 1)
        emit(results, name, value)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    failed = [name for name, value in results.items() if value.get("passed") is False or "error" in value]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
