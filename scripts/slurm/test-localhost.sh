#!/usr/bin/env bash
# End-to-end test of scripts/slurm/ on a real single-node SLURM cluster on this machine.
#
#   scripts/slurm/test-localhost.sh          (as root, Debian bookworm)
#
# Installs slurm-wlm and munge when missing, starts a private munged (own key and socket) and a
# private slurmctld + slurmd (own config, ports 16817/16818, state under $T2S_SLURM_STATE),
# writes a synthetic BIDS dataset with four participants (the last with a second echo set with
# an echo of another shape: that task publishes its good set and exits 65), submits it with submit.sh
# in native mode (the repository's .venv, made with the Makefile when missing), waits for the
# array and the group job, then checks every task's recorded exit code, that the group job ran
# all the same and listed the failed task, every participant's maps and the group TSV. Stops the daemons it started, by PID, whatever happens. Exit 0 only when all passed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
state=${T2S_SLURM_STATE:-/var/tmp/t2starmap-slurm-test}
timeout_s=${T2S_SLURM_TIMEOUT:-300}
n_participants=4
host=$(hostname -s)

step() { printf '\n=== %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() { echo "slurm-test: FAIL: $*" >&2; exit 1; }
t_start=$(date +%s)

pids=()
stop_daemons() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    pids=()
}
dump_logs() {
    for f in "$state"/slurmctld.log "$state"/slurmd.log "$state"/out/logs/slurm/*.log; do
        [[ -f $f ]] && { echo "--- $f"; tail -15 "$f"; }
    done
}
on_exit() {
    local rc=$?
    ((rc == 0)) || dump_logs
    stop_daemons
    exit "$rc"
}
trap on_exit EXIT

# Daemons left by an interrupted earlier run of this script (found by their pid files in our own
# state folder, and only if their command line still names that folder).
for pidfile in "$state"/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$state"; then
        echo "stopping daemon $pid left by an earlier run"
        pids+=("$pid")
    fi
done
stop_daemons
rm -rf "$state"
mkdir -p "$state"/{munge,ctld,d}

step "tools"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [[ $(id -u) == 0 ]] || fail "need root to install slurm-wlm and munge"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi
if [[ ! -x $repo/.venv/bin/t2starmap ]]; then
    make -C "$repo" .venv/.installed
fi
slurmctld -V

step "munged (private key and socket)"
dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$state/munge/munge.key"
chmod 0700 "$state/munge"
socket=$state/munge/munge.socket
munged --foreground --force --key-file="$state/munge/munge.key" --socket="$socket" \
    --pid-file="$state/munged.pid" --seed-file="$state/munge/seed" \
    --log-file="$state/munge/munged.log" > "$state/munge/stdout.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [[ -S $socket ]] && break; sleep 0.1; done
munge --socket="$socket" -n | unmunge --socket="$socket" >/dev/null || fail "munge round trip"
echo "munged pid ${pids[-1]}"

step "slurmctld + slurmd"
hw=$(slurmd -C | head -1)  # NodeName=... CPUs=... RealMemory=...: what slurmd will detect
cpus=$(grep -o 'CPUs=[0-9]*' <<< "$hw" | cut -d= -f2)
export SLURM_CONF=$state/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=t2starmap-test
SlurmctldHost=$host
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
$hw State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -c -f "$SLURM_CONF" > "$state/slurmctld.stdout" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" > "$state/slurmd.stdout" 2>&1 &
pids+=($!)
echo "daemon pids: ${pids[*]} (munged slurmctld slurmd); node: $hw"
for _ in $(seq 120); do
    node_state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    [[ $node_state == idle ]] && break
    sleep 0.5
done
[[ $node_state == idle ]] || fail "node not idle after 60 s (state: '$node_state')"
sinfo

step "synthetic dataset: $n_participants participants"
bids=$state/bids out=$state/out
"$repo/.venv/bin/python" - "$bids" "$n_participants" <<'PY'
import sys
from t2starmap.sim.phantoms import write_bids_example
labels = [f"{k:02d}" for k in range(1, int(sys.argv[2]) + 1)]
root = write_bids_example(sys.argv[1], dict.fromkeys(labels, (None,)), first_seed=101,
                          name="t2starmap SLURM test")
# the last participant: a second echo set (run-2) with an echo of another shape (valid BIDS,
# bad data for a fit: exit 65), which fails alone
import shutil
import nibabel as nib
import numpy as np
anat = root / f"sub-{labels[-1]}" / "anat"
for path in sorted(anat.glob("*_MEGRE.*")):
    shutil.copy(path, anat / path.name.replace("_echo-", "_run-2_echo-"))
broken = next(anat.glob("*_run-2_echo-2_*MEGRE.nii.gz"))
image = nib.load(broken)
nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-2], image.affine), broken)
PY
cat "$bids/participants.tsv"

step "submit (${T2S_SLURM_SUBMIT_ARGS:-native mode})"
# T2S_SLURM_SUBMIT_ARGS replaces the mode options (default: the native install in .venv).
read -r -a mode_args <<< "${T2S_SLURM_SUBMIT_ARGS:---native --cmd $repo/.venv/bin/t2starmap}"
ids=$("$repo/scripts/slurm/submit.sh" "$bids" "$out" "${mode_args[@]}" --cpus 1 --mem 500M | tail -1)
array_id=$(cut -f1 <<< "$ids") group_id=$(cut -f2 <<< "$ids")
echo "array job $array_id, group job $group_id"
squeue

step "wait for the jobs (at most $timeout_s s)"
t0=$(date +%s)
while squeue -h -j "$array_id,$group_id" 2>/dev/null | grep -q .; do
    (($(date +%s) - t0 < timeout_s)) || { squeue; fail "jobs still queued after $timeout_s s"; }
    sleep 2
done
echo "jobs finished in $(($(date +%s) - t0)) s"
scontrol show job "$array_id" | grep -E 'JobId=|JobState|ExitCode' || true
scontrol show job "$group_id" | grep -E 'JobId=|JobState|ExitCode' || true

step "check"
status=$out/logs/slurm
n_exit=$(cat "$status"/task-"${array_id}"_*.exit 2>/dev/null | wc -l)
((n_exit == n_participants)) || fail "$n_exit task exit codes recorded, expected $n_participants"
last=$(printf %02d "$n_participants")
bad=$(awk -F '\t' '$3 != 0 { print $1 "/" $2 "/" $3 }' "$status"/task-"${array_id}"_*.exit)
[[ $bad == "$n_participants/$last/65" ]] \
    || fail "expected only task $n_participants (sub-$last, one set truncated) to exit 65, got: $bad"
cat "$status/exit_codes.tsv" 2>/dev/null || fail "no exit_codes.tsv (the group job did not run)"
group_rc=$(cut -f3 "$status/group_${group_id}.exit")
[[ $group_rc == 0 ]] || fail "group job exit $group_rc"
cat "$status/failed_tasks.tsv"
[[ $(tail -n +2 "$status/failed_tasks.tsv") == "$n_participants"$'\t'"$last"$'\t65' ]] \
    || fail "failed_tasks.tsv does not list task $n_participants alone"
grep -q "1 participant task(s) failed" "$out"/logs/slurm/group_"${group_id}".log \
    || fail "the group job's log does not list the failed task"
for k in $(seq -f %02g 1 "$n_participants"); do
    for suffix in T2starmap R2starmap S0map desc-rmse_statmap desc-signal_mask desc-failed_mask; do
        [[ -f $out/sub-$k/anat/sub-${k}_${suffix}.nii.gz && -f $out/sub-$k/anat/sub-${k}_${suffix}.json ]] \
            || fail "missing sub-$k $suffix"
    done
done
# Threads follow the allocation (--cpus 1 above; the app alone would take every CPU).
"$repo/.venv/bin/python" - "$out/logs" "$n_participants" <<'PY' || fail "settings logs"
import json, sys
from pathlib import Path
logs = sorted(Path(sys.argv[1]).glob("settings_participant_*.json"))
assert len(logs) == int(sys.argv[2]), [p.name for p in logs]
for log in logs:
    s = json.loads(log.read_text())
    assert s["nprocs"] == 1, (log.name, s["nprocs"])
    assert len(s["participant_labels"]) == 1, (log.name, s["participant_labels"])
print(f"{len(logs)} participant settings logs: one label each, nprocs 1 (SLURM_CPUS_PER_TASK)")
PY
tsv=$out/group_T2starmap.tsv
[[ -f $tsv ]] || fail "no group TSV"
rows=$(($(wc -l < "$tsv") - 1))
((rows == n_participants + 1)) || fail "group TSV has $rows rows, expected $n_participants + 1 failed"
grep -q "run-2.*failed" "$tsv" || fail "the failed run-2 set is not a failed row of the group TSV"
for k in $(seq -f %02g 1 "$n_participants"); do
    grep -q "sub-$k\|^$k" "$tsv" || fail "sub-$k missing from the group TSV"
done
cut -f1-6 "$tsv"
leftover=$(find "$out" -name '.*.tmp*' | head -3)
[[ -z $leftover ]] || fail "temporary files left in the output: $leftover"
leftover=$(find "${TMPDIR:-/tmp}" -maxdepth 1 -name "t2starmap-${array_id}_*" | head -3)
[[ -z $leftover ]] || fail "scratch folders not removed: $leftover"

step "done"
echo "SLURM test passed in $(($(date +%s) - t_start)) s"
