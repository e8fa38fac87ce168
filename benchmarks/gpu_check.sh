#!/usr/bin/env bash
# The device check (benchmarks/gpu_check.py): the tiny workflow on CUDA against the CPU, CAMs on
# both, the AdvCAM and random-walk benchmarks on the GPU, and MSRC-v2 at twice its image size for
# CAM, AdvCAM and P-NOC seeds. About 8 minutes on one H100 with 16 cores (estimated: not yet run).
# Run from the repository root on the GPU node, after `make env`:
#     bash benchmarks/gpu_check.sh [--msrc PATH] [--msrc-every K]
# Figures go to $OUT/gpu_check.json (OUT defaults to gpu_check_out/) and the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=".venv/bin/python"
[ -x "$PYTHON" ] || PYTHON="python"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not found" >&2
exec "$PYTHON" benchmarks/gpu_check.py --device cuda "$@"
