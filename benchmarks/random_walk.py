"""Random walk: IRN's dense transition-matrix power vs the sparse 2^exp_times products.

Both run on the same boundary map and seeds at stride 4 of an image of ``--height`` × ``--width``
(default 375 × 500, a typical VOC image: a 94 × 125 grid, N = 11,750), each in its own process so
that its peak resident memory (``ru_maxrss``) is its own. Times cover the walk only (affinities,
transition matrix, propagation), not process start or input loading. ``max_abs_diff`` compares
the two results after dividing both by the reference's max, as the pipeline normalises them.

Precision: the reference runs in ``--dtype`` (float32, IRN's), the sparse walk in
``--sparse-dtype`` (float64, the step's default: exact and still cheap). In float32 the 256
sequential products round differently from the 8 squarings; each is ~1e-4 of the max away from
the exact result at this size (docs/methods.md §5), so a float32-vs-float32 comparison measures rounding.

The dense reference needs N² floats per matrix (0.55 GB in float32 at the default size) and
exp_times products of N × N matrices (8 · 2N³ ≈ 2.6e13 flops): minutes on a CPU core.

    .venv/bin/python benchmarks/random_walk.py                 # full size
    .venv/bin/python benchmarks/random_walk.py --height 150 --width 200 --dtype float64

The last line printed is a JSON object: reference_s, sparse_s, speedup, max_abs_diff,
reference_peak_mb, sparse_peak_mb, and the settings.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_inputs(height: int, width: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A boundary map with a few closed contours and walls, and smooth seeds peaking inside them."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    boundary = 0.05 * rng.random((height, width))
    seeds = np.zeros((classes, height, width))
    for k in range(classes):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        radius = rng.uniform(0.1, 0.25) * min(height, width)
        distance = np.hypot(ys - cy, xs - cx)
        boundary = np.maximum(boundary, np.exp(-((distance - radius) ** 2) / 2.0))
        seeds[k] = np.exp(-(distance / radius) ** 2) + 0.05 * rng.random((height, width))
    wall = rng.integers(width // 4, 3 * width // 4)
    boundary[:, wall] = np.maximum(boundary[:, wall], 0.9)
    seeds /= seeds.max(axis=(1, 2), keepdims=True)
    return boundary, seeds


def worker(kind: str, inputs: Path, output: Path, dtype: str, radius: int, beta: float, exp_times: int,
           threads: int, device_name: str = "cpu") -> None:
    import torch

    from wsss_steps.methods.random_walk import dense_random_walk, random_walk
    from wsss_steps.networks.inputs import resolve_device

    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    data = np.load(inputs)
    torch_dtype = getattr(torch, dtype)
    boundary = torch.from_numpy(data["boundary"]).to(device, torch_dtype)
    seeds = torch.from_numpy(data["seeds"]).to(device, torch_dtype)
    function = dense_random_walk if kind == "reference" else random_walk
    # Warm-up on a tiny map (library loading, first-call overheads, CUDA kernels' first launch).
    function(seeds[:, :8, :8], boundary[:8, :8], radius, beta, exp_times)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = function(seeds, boundary, radius, beta, exp_times)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    np.save(output, result.double().cpu().numpy())
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "baseline_mb": baseline, "gpu_peak_mb": gpu_peak}))


def run_worker(kind: str, inputs: Path, output: Path, args: argparse.Namespace) -> dict:
    dtype = args.dtype if kind == "reference" else args.sparse_dtype
    command = [sys.executable, __file__, "--worker", kind, "--inputs", str(inputs), "--output", str(output),
               "--dtype", dtype, "--radius", str(args.radius), "--beta", str(args.beta),
               "--exp-times", str(args.exp_times), "--threads", str(args.threads), "--device", args.device]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=375, help="image height (default: %(default)s)")
    parser.add_argument("--width", type=int, default=500, help="image width (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=3, help="seed maps (default: %(default)s)")
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision of the dense reference (default: %(default)s, IRN's)")
    parser.add_argument("--sparse-dtype", choices=("float32", "float64"), default="float64",
                        help="precision of the sparse walk (default: %(default)s, the step's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both walks run (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("reference", "sparse"), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT))
        worker(args.worker, args.inputs, args.output, args.dtype, args.radius, args.beta, args.exp_times,
               args.threads, args.device)
        return

    grid = (math.ceil(args.height / 4), math.ceil(args.width / 4))
    nodes = grid[0] * grid[1]
    print(f"image {args.height} x {args.width} -> stride-4 grid {grid[0]} x {grid[1]} (N = {nodes}), "
          f"{args.classes} seed maps, radius {args.radius}, beta {args.beta}, {2 ** args.exp_times} steps, "
          f"reference {args.dtype}, sparse {args.sparse_dtype}, {args.threads} thread(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        boundary, seeds = make_inputs(*grid, args.classes, args.seed)
        np.savez(tmp_path / "inputs.npz", boundary=boundary, seeds=seeds)
        sparse = run_worker("sparse", tmp_path / "inputs.npz", tmp_path / "sparse.npy", args)
        print(f"sparse:    {sparse['seconds']:.3f} s, peak RSS {sparse['peak_mb']:.0f} MB "
              f"(before the walk {sparse['baseline_mb']:.0f} MB)", flush=True)
        reference = run_worker("reference", tmp_path / "inputs.npz", tmp_path / "reference.npy", args)
        print(f"reference: {reference['seconds']:.3f} s, peak RSS {reference['peak_mb']:.0f} MB "
              f"(before the walk {reference['baseline_mb']:.0f} MB)", flush=True)
        expected = np.load(tmp_path / "reference.npy")
        got = np.load(tmp_path / "sparse.npy")
    scale = float(np.abs(expected).max())
    diff = float(np.abs(got - expected).max() / scale)
    summary = {
        "reference_s": round(reference["seconds"], 4), "sparse_s": round(sparse["seconds"], 4),
        "speedup": round(reference["seconds"] / sparse["seconds"], 1), "max_abs_diff": diff,
        "reference_peak_mb": round(reference["peak_mb"], 1), "sparse_peak_mb": round(sparse["peak_mb"], 1),
        "reference_growth_mb": round(reference["peak_mb"] - reference["baseline_mb"], 1),
        "sparse_growth_mb": round(sparse["peak_mb"] - sparse["baseline_mb"], 1),
        "height": args.height, "width": args.width, "grid": list(grid), "classes": args.classes,
        "radius": args.radius, "beta": args.beta, "exp_times": args.exp_times, "dtype": args.dtype, "sparse_dtype": args.sparse_dtype,
        "threads": args.threads, "device": args.device,
        "reference_gpu_peak_mb": round(reference["gpu_peak_mb"], 1), "sparse_gpu_peak_mb": round(sparse["gpu_peak_mb"], 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
