#!/bin/sh
# `make image`: builds deploy/Dockerfile with podman (or docker) from the repository root.
#
#   IMAGE       the tag (default inference-platform:0.1.0)
#   BASE_IMAGE  the base image; unset: the Dockerfile's default (python:3.11-slim-trixie) when the
#               engine has it or can pull it, else a Debian bookworm base made here with mmdebstrap
#               (deploy/images/debian-python.sh, tagged localhost/debian-python:3.11, made once)
#   BUILD_NETWORK  e.g. host, when the engine's default build network cannot reach the package index
#
# A CPU torch wheel of the pinned version found in PIP_FIND_LINKS (default /opt/wheels) is linked
# into .whl/, where the Dockerfile installs it from instead of the PyTorch index.
set -eu
cd "$(dirname "$0")/../.."
ENGINE="${ENGINE:-$(command -v podman || command -v docker || true)}"
[ -n "$ENGINE" ] || { echo "neither podman nor docker is installed (apt-get install podman)" >&2; exit 1; }
IMAGE="${IMAGE:-inference-platform:0.1.0}"
DEFAULT_BASE="$(sed -n 's/^ARG BASE_IMAGE=//p' deploy/Dockerfile)"
LOCAL_BASE=localhost/debian-python:3.11

base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
  if "$ENGINE" image inspect "$DEFAULT_BASE" >/dev/null 2>&1 || "$ENGINE" pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    base="$DEFAULT_BASE"
  else
    echo "$DEFAULT_BASE cannot be pulled: using $LOCAL_BASE (Debian bookworm, made with mmdebstrap)" >&2
    "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1 || deploy/images/debian-python.sh "$LOCAL_BASE"
    base="$LOCAL_BASE"
  fi
fi

torch="$(sed -n 's/^torch==//p' requirements.txt)"
mkdir -p .whl
for dir in $(echo "${PIP_FIND_LINKS:-/opt/wheels}" | tr ' ' '\n'); do
  for wheel in "$dir"/torch-"$torch"+cpu-cp311-cp311-manylinux*_x86_64.whl; do
    [ -f "$wheel" ] || continue
    [ -f ".whl/$(basename "$wheel")" ] || ln "$wheel" .whl/ 2>/dev/null || cp "$wheel" .whl/
  done
done

# podman writes OCI images by default, which have no HEALTHCHECK: ask for the docker format.
format=""
[ "$(basename "$ENGINE")" = podman ] && format="--format=docker"
echo "building $IMAGE from $base" >&2
exec "$ENGINE" build $format -f deploy/Dockerfile --build-arg BASE_IMAGE="$base" \
  ${BUILD_NETWORK:+--network="$BUILD_NETWORK"} -t "$IMAGE" .
