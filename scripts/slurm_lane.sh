#!/usr/bin/env bash
# Opt-in test lane: a single-host Slurm (Debian's slurmctld, two slurmd daemons as nodes n1 and n2, munge; all on
# localhost, all stopped at exit) runs the real examples/paper/zppo.sbatch on CPU with toy models and the in-process
# engines: one job straight through, then one that Slurm requeues mid-run; it must resume from its checkpoint and
# end with the straight job's metrics. tests_live/slurm_lane.py checks both (docs/cluster.md#single-host-slurm-lane).
# Needs root: it installs the packages (once) and runs the daemons as root. Everything else lives in runs/slurm_lane.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
LANE=$PWD/runs/slurm_lane        # absolute: slurm.conf's paths are read by daemons in other directories
MODELS=runs/slurm_lane_models    # tools/make_toy_models.py's cache: rebuilt only when its recipe changes
PORT=${ZPPO_SLURM_PORT:-16817}   # slurmctld; the nodes' slurmd on PORT+1, PORT+2; torchrun's rendezvous on PORT+3
export SLURM_CONF=$LANE/slurm.conf OMP_NUM_THREADS=1 TORCHDYNAMO_DISABLE=1
fail() { echo "slurm_lane.sh: $*" >&2; exit 1; }

# Debian's packages, only when missing; apt-get update only when the package lists are too old to find them.
if ! command -v slurmctld slurmd sbatch munged > /dev/null; then
  pkgs=(slurmctld slurmd slurm-client munge)
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" > /dev/null 2>&1 ||
    { apt-get update -qq > /dev/null && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" > /dev/null; }
fi

# A fresh cluster every time: no job or node state from an earlier run.
rm -rf "$LANE" && mkdir -p "$LANE"/{munge,state,spool,log}
chmod 711 "$LANE/munge"
head -c 1024 /dev/urandom > "$LANE/munge/key" && chmod 400 "$LANE/munge/key"
DAEMONS=()
stop_all() {  # newest first, munge last: slurmctld saves its state through munge-authenticated RPCs
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    kill "${DAEMONS[i]}" 2>/dev/null || continue
    timeout 40 tail --pid="${DAEMONS[i]}" -f /dev/null || kill -9 "${DAEMONS[i]}" 2>/dev/null || true
  done
  DAEMONS=()
}
trap stop_all EXIT
munged -F --force --key-file="$LANE/munge/key" --socket="$LANE/munge/sock" --pid-file="$LANE/munge/pid" \
  --log-file="$LANE/log/munged.log" --seed-file="$LANE/munge/seed" > "$LANE/log/munged.out" 2>&1 &
DAEMONS+=($!)

# Two nodes on one host: Debian builds Slurm with multiple-slurmd support (each node its own slurmd, port and
# spool). select/linear gives a job whole nodes; no cgroups, no accounting database (scontrol and the
# jobcomp file say how jobs ended). KillWait: how long a requeued job's trainer has to finish its step.
cat > "$SLURM_CONF" <<EOF
ClusterName=zppolane
SlurmctldHost=localhost
SlurmctldPort=$PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$LANE/munge/sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$LANE/state
SlurmdSpoolDir=$LANE/spool/%n
SlurmctldPidFile=$LANE/slurmctld.pid
SlurmdPidFile=$LANE/spool/slurmd-%n.pid
SlurmctldLogFile=$LANE/log/slurmctld.log
SlurmdLogFile=$LANE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LANE/log/jobcomp.txt
SelectType=select/linear
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=60
SlurmdParameters=config_overrides
NodeName=n[1-2] NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$((PORT + 1))-$((PORT + 2)) CPUs=1 RealMemory=1000
PartitionName=lane Nodes=n[1-2] Default=YES MaxTime=30 State=UP
EOF
slurmctld -D -c > "$LANE/log/slurmctld.out" 2>&1 &
DAEMONS+=($!)
for node in n1 n2; do
  slurmd -D -N "$node" > "$LANE/log/slurmd-$node.out" 2>&1 &
  DAEMONS+=($!)
done
until [ "$(timeout 15 sinfo -h -N -o %T 2>/dev/null | sort -u)" = idle ]; do
  ((SECONDS < 60)) || fail "the nodes are not idle after 60 s: $(sinfo -N 2>&1); see $LANE/log"
  sleep 1
done
echo "slurm_lane.sh: Slurm $(sinfo -V | cut -d' ' -f2) up with nodes $(sinfo -h -o %N) after ${SECONDS}s"

.venv/bin/python tools/make_toy_models.py --smoke --out "$MODELS" | tail -n 1

# The toy recipe: the CPU demo's config at test size, a checkpoint after every step.
chain="{kind: reasoning_gym, task: chain_sum, seed: %d, size: %d, task_config: {max_digits: 1, max_terms: 2}}"
# shellcheck disable=SC2059  # the format is ours
RECIPE=(run.steps=4 run.save_every=1 "student.hf_path=$MODELS/student_tiny" "teacher.hf_path=$MODELS/teacher"
  rollout.n_new=4 rollout.group_size=4 rollout.teacher_group_size=2 rollout.max_new_tokens=12
  train.micro_batch_size=8 eval.max_new_tokens=12 "data.train=[$(printf "$chain" 0 40)]"
  "data.eval={chain_sum: [$(printf "$chain" 1 6)]}" "data.held_out=[]")
submit() {  # NAME [sbatch options]: prints the job id; the sbatch's own #SBATCH lines are overridden for a CPU
  local name=$1
  shift
  REQUEUE=1 SERVERS=embedded GPUS_PER_NODE=0 PY=.venv/bin/python CONFIG=examples/cpu_toy/zppo.yaml \
    RUN_DIR=runs/slurm_lane/$name RDZV_ENDPOINT=localhost:$((PORT + 3)) \
    timeout 30 sbatch --parsable -N 2 --gpus-per-node=0 --time=30 -J "lane-$name" -o "$LANE/$name.out" \
    "$@" examples/paper/zppo.sbatch "${RECIPE[@]}"
}
state() { timeout 15 scontrol show job -o "$1" | grep -o "JobState=[A-Z_]*" | cut -d= -f2; }
wait_for() {  # JOB SECONDS: until the job has ended, requeues included
  local end=$((SECONDS + $2))
  while [[ "$(state "$1")" =~ ^(PENDING|CONFIGURING|RUNNING|COMPLETING|REQUEUED|REQUEUE_HOLD|PREEMPTED|)$ ]]; do
    ((SECONDS < end)) || { timeout 15 scancel "$1"; fail "job $1 not done after $2 s; see $LANE"; }
    sleep 2
  done
}

STRAIGHT=$(submit straight --no-requeue)
wait_for "$STRAIGHT" 240
echo "slurm_lane.sh: job $STRAIGHT (straight through) $(state "$STRAIGHT") after ${SECONDS}s"

# Stopped as the sbatch's --signal=B:TERM@600 stops a job before its time limit, but now: Slurm sends SIGTERM to
# the batch script alone, which passes it to the trainer's step; the trainer finishes its step, checkpoints and
# exits 143; the script (REQUEUE=1) requeues the job, whose next run resumes from the checkpoint.
PREEMPTED=$(submit preempted --requeue --open-mode=append)
metrics=runs/slurm_lane/preempted/metrics.jsonl
end=$((SECONDS + 180))
until [ -s "$metrics" ]; do
  ((SECONDS < end)) || fail "job $PREEMPTED wrote no metrics in 180 s; see $LANE/preempted.out"
  [ "$(state "$PREEMPTED")" != COMPLETED ] || fail "job $PREEMPTED ended before it could be requeued"
  sleep 1
done
timeout 15 scancel --batch --signal=TERM "$PREEMPTED"
# A requeued job waits about 2 minutes before it may start again; the lane does not, but it leaves a few
# seconds: a start within the second its last run ended on the nodes is refused ("Job credential revoked"),
# and the job fails (seen once in CI).
end=$((SECONDS + 120))
until timeout 15 scontrol show job -o "$PREEMPTED" | grep -q "JobState=PENDING.*Restarts=1"; do
  ((SECONDS < end)) || fail "job $PREEMPTED not requeued 120 s after the signal; see $LANE/preempted.out"
  sleep 1
done
timeout 15 scontrol update JobId="$PREEMPTED" StartTime=now+3
wait_for "$PREEMPTED" 300
echo "slurm_lane.sh: job $PREEMPTED (signalled, requeued) $(state "$PREEMPTED") after ${SECONDS}s"

.venv/bin/python tests_live/slurm_lane.py --lane runs/slurm_lane --straight "$STRAIGHT" --preempted "$PREEMPTED"
stop_all
echo "slurm_lane.sh: passed in $((SECONDS / 60))m$((SECONDS % 60))s"
