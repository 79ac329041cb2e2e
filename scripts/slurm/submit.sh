#!/usr/bin/env bash
# Submit t2starmap on a SLURM cluster: one array task per participant, then the group level.
#
#   scripts/slurm/submit.sh BIDS_DIR OUTPUT_DIR [options] [-- sbatch options for both jobs]
#
# Options:
#   --native            run the installed `t2starmap` (or --cmd) instead of Apptainer
#   --sif FILE          the Apptainer image (default: ./t2starmap.sif)
#   --cmd CMD           the app in native mode (default: t2starmap from PATH)
#   --gpu               request one GPU per task (--gres=gpu:1) and pass --nv
#   --cpus N            CPUs per participant task (default 1); becomes the app's --nprocs
#   --mem SIZE          memory per participant task (default 4G)
#   --max-running N     at most N tasks at once (array throttle, default: no limit)
#   --scratch DIR       node-local scratch for -w (default: $SLURM_TMPDIR, $TMPDIR or /tmp)
#   --args "..."        extra options for the participant level, e.g. "--fit-method wls"
#   --no-group          submit only the participant tasks
# Prints the array job id and the group job id (tab-separated) on the last line.
# Logs and each task's exit code go to OUTPUT_DIR/logs/slurm/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 64; }
(($# >= 2)) || usage
bids=$(realpath "$1") out=$(realpath -m "$2"); shift 2
mode=apptainer sif=$PWD/t2starmap.sif cmd=t2starmap gpu=0 cpus=1 mem=4G throttle="" scratch=""
args="" group=1 sbatch_extra=()
while (($#)); do
    case $1 in
        --native) mode=native ;;
        --sif) sif=$(realpath "$2"); shift ;;
        --cmd) cmd=$2; shift ;;
        --gpu) gpu=1 ;;
        --cpus) cpus=$2; shift ;;
        --mem) mem=$2; shift ;;
        --max-running) throttle=%$2; shift ;;
        --scratch) scratch=$2; shift ;;
        --args) args=$2; shift ;;
        --no-group) group=0 ;;
        --) shift; sbatch_extra=("$@"); break ;;
        *) usage ;;
    esac
    shift
done

[[ -f $bids/participants.tsv ]] || { echo "no $bids/participants.tsv" >&2; exit 66; }
n=$(awk -F '\t' 'NR > 1 && $1 != "" { n++ } END { print n + 0 }' "$bids/participants.tsv")
((n > 0)) || { echo "$bids/participants.tsv lists no participants" >&2; exit 66; }
[[ $mode == native || -f $sif ]] || { echo "no Apptainer image $sif (or use --native)" >&2; exit 66; }
logs=$out/logs/slurm
mkdir -p "$logs"

export T2S_BIDS_DIR=$bids T2S_OUTPUT_DIR=$out T2S_MODE=$mode T2S_SIF=$sif T2S_CMD=$cmd \
    T2S_GPU=$gpu T2S_ARGS=$args T2S_STATUS_DIR=$logs T2S_TASKS=$n
[[ -n $scratch ]] && export T2S_SCRATCH=$scratch
gres=()
((gpu)) && gres=(--gres=gpu:1)

array_id=$(sbatch --parsable --export=ALL --array="1-$n$throttle" \
    --cpus-per-task="$cpus" --mem="$mem" "${gres[@]}" \
    --output="$logs/participant_%A_%a.log" "${sbatch_extra[@]}" "$here/participant.sbatch")
array_id=${array_id%%;*}
echo "participant array job $array_id: $n tasks" >&2
group_id=""
if ((group)); then
    # afterany, not afterok: a participant with one failed echo set exits 65 although its
    # other sets are published; the group job summarises what was published and lists what
    # failed (group.sbatch).
    group_id=$(sbatch --parsable --export=ALL --dependency="afterany:$array_id" \
        --output="$logs/group_%j.log" "${sbatch_extra[@]}" "$here/group.sbatch")
    group_id=${group_id%%;*}
    echo "group job $group_id (runs once every participant task has ended)" >&2
fi
printf '%s\t%s\n' "$array_id" "$group_id"
