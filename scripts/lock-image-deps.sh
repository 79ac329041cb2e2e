#!/usr/bin/env bash
# Regenerate docker/requirements.txt: the exact versions of the image's runtime dependencies.
# Resolves the project's [project.dependencies] in a throw-away venv (Python 3.11, as in the
# image) and freezes everything except torch (pinned by the Dockerfile's TORCH_VERSION build
# argument) and the project itself.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
torch_version=${TORCH_VERSION:-2.13.0}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "torch==$torch_version"
"$venv/bin/pip" install --quiet "$repo"
{
    echo "# Runtime dependencies of the container image, pinned (torch is pinned by the TORCH_VERSION"
    echo "# build argument instead, because its build differs between GPU and CPU images)."
    echo "# Regenerate: scripts/lock-image-deps.sh"
    "$venv/bin/pip" freeze --all | grep -v -E '^(t2starmap|torch|pip)( @|==)'
} > "$repo/docker/requirements.txt"
echo "wrote $repo/docker/requirements.txt"
