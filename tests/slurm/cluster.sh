# A one-node SLURM cluster on localhost for tests, in its own directory: its own munge key and
# socket, slurm.conf, state and spool directories, ports and logs. Source this file, then
#   slurm_cluster_start DIR      starts munged, slurmctld and slurmd (foreground daemons run in the
#                                background; their process ids go to DIR/pids) and exports SLURM_CONF
#   slurm_cluster_stop DIR       kills exactly those process ids (TERM, then KILL)
# No cgroups: proctrack/linuxproc, task/none; no accounting (sacct is off: status through squeue).
# The node offers one generic resource gpu (/dev/null stands in for the device), so GPU requests (--gpus,
# --gres=gpu:1) are scheduled for real without a GPU.

slurm_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

slurm_cluster_start() {
  local dir=$1 cpus=${SLURM_TEST_CPUS:-2} mem=${SLURM_TEST_MEM_MB:-12000} user
  user=$(id -un)
  mkdir -p "$dir"/{state,spool,log,munge}
  chmod 700 "$dir" "$dir/munge"
  : > "$dir/pids"

  # munge: a fresh key for this cluster only.
  dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
  chmod 400 "$dir/munge/munge.key"
  munged --foreground --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munge.seed" >> "$dir/log/munged.out" 2>&1 &
  echo "munged $!" >> "$dir/pids"

  local ctld_port slurmd_port
  ctld_port=$(slurm_free_port)
  slurmd_port=$(slurm_free_port)
  cat > "$dir/slurm.conf" <<CONF
ClusterName=wsss-test
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
KillWait=5
GresTypes=gpu
NodeName=localhost NodeHostname=localhost CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  cat > "$dir/gres.conf" <<CONF
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
CONF
  export SLURM_CONF=$dir/slurm.conf
  # snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable, SLURM_CONF included,
  # before the srun it runs inside each job; a real cluster's config sits at the default path
  # (or comes from slurmctld, configless), which this one must not touch. So jobs find an srun
  # that knows the config first on PATH (sbatch --export=ALL passes PATH on).
  mkdir -p "$dir/bin"
  printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$SLURM_CONF" "$(command -v srun)" > "$dir/bin/srun"
  chmod +x "$dir/bin/srun"
  export PATH="$dir/bin:$PATH"

  slurmctld -D -c -f "$SLURM_CONF" >> "$dir/log/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >> "$dir/pids"
  slurmd -D -f "$SLURM_CONF" -N localhost >> "$dir/log/slurmd.out" 2>&1 &
  echo "slurmd $!" >> "$dir/pids"

  # Ready when the node is idle.
  local i
  for i in $(seq 60); do
    if timeout -s KILL 10 sinfo --noheader --Node --format=%t 2>/dev/null | grep -qx idle; then
      return 0
    fi
    sleep 1
  done
  echo "slurm cluster did not come up; logs in $dir/log" >&2
  tail -n 20 "$dir"/log/*.log >&2 || true
  return 1
}

slurm_cluster_stop() {
  local dir=$1 name pid
  [ -f "$dir/pids" ] || return 0
  # slurmd and slurmctld first, munged last (they need it to shut down cleanly).
  for name in slurmd slurmctld munged; do
    while read -r n pid; do
      [ "$n" = "$name" ] || continue
      kill -TERM "$pid" 2>/dev/null || continue
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -KILL "$pid" 2>/dev/null || true
    done < "$dir/pids"
  done
  rm -f "$dir/pids"
}
