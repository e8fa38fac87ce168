#!/usr/bin/env bash
# `make test-slurm`: installs Debian's slurm-wlm and munge when missing, starts a one-node SLURM
# cluster on localhost (its own config, state and munge key in a temporary folder), runs
# tests/test_slurm.py against it (the README's cluster commands, the tiny workflow through
# --executor slurm, compared with a local run) and stops exactly the daemons it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tests/slurm/cluster.sh

missing=()
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
  || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  echo "installing ${missing[*]}"
  timeout -s KILL 300 $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout -s KILL 900 $sudo apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi

CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/wsss-slurm.XXXXXX")
cleanup() {
  local status=$?
  # Cancel whatever a failed run left queued, then stop our daemons by process id.
  [ -n "${SLURM_CONF:-}" ] && timeout -s KILL 20 scancel --user "$(id -un)" 2>/dev/null || true
  slurm_cluster_stop "$CLUSTER_DIR"
  if [ "$status" -ne 0 ]; then
    echo "slurm logs kept in $CLUSTER_DIR/log" >&2
  else
    rm -rf "$CLUSTER_DIR"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
slurm_cluster_start "$CLUSTER_DIR"
echo "slurm cluster up in $(( $(date +%s) - start )) s: $(sinfo --noheader --Node --format='%N %c CPUs %m MB %G %t')"
export WSSS_SLURM_TEST=1
timeout -s KILL 1200 .venv/bin/pytest -q -s -p no:cacheprovider tests/test_slurm.py
echo "make test-slurm: $(( $(date +%s) - start )) s"
