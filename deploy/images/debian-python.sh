#!/bin/sh
# Builds a local base image for deploy/Dockerfile where no public image registry is reachable:
# a minimal Debian bookworm root (Python 3.11 from the Debian archive) made with mmdebstrap and
# imported into podman. Usage: deploy/images/debian-python.sh [IMAGE]  (default
# localhost/debian-python:3.11). Needs root (or podman unshare), mmdebstrap and podman.
#
# MIRROR overrides the Debian mirror (default: the first deb.debian.org-style URI apt uses here).
# CA certificates installed locally (/usr/local/share/ca-certificates/*.crt, e.g. the CA of a
# TLS-inspecting egress proxy) are copied into the root, so pip inside builds trusts them too.
set -eu
IMAGE="${1:-localhost/debian-python:3.11}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }
command -v podman >/dev/null || { echo "podman is missing: apt-get install podman" >&2; exit 1; }

hook='mkdir -p "$1/usr/local/share/ca-certificates"'
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  hook="$hook && cp /usr/local/share/ca-certificates/*.crt \"\$1/usr/local/share/ca-certificates/\" && chroot \"\$1\" update-ca-certificates >/dev/null"
fi

mmdebstrap --quiet --variant=minbase \
  --include=python3,python3-venv,ca-certificates \
  --customize-hook="$hook" \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  "$SUITE" - "$MIRROR" "deb $MIRROR-security $SUITE-security main" \
  | podman import --change 'CMD ["python3"]' - "$IMAGE"
echo "base image: $IMAGE"
