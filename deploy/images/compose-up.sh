#!/bin/sh
# `make compose-up`: deploy/compose.yaml started with podman-compose, one step after another.
# podman 4.3 (Debian 12) cannot do what compose's depends_on asks: podman-compose ignores the
# `service_healthy` conditions on it ("podman 4.3.1 doesn't support healthy"), health checks have
# no timer without systemd, and a container that --requires an exited one (web -> migrate ->
# postgres) fails to start ("generating dependency graph ... not found in input list"). So:
# PostgreSQL and Redis, wait until their health checks pass, migrate (must exit 0), then web and
# worker without dependencies. Prometheus is left out (its image is not built here).
#
#   PODMAN_COMPOSE  the podman-compose command (default: podman-compose)
#   COMPOSE_FILES   default: -f compose.yaml -f compose.debian.yaml (Debian-built PostgreSQL, Redis)
#   PROJECT         the compose project name (default: inference-platform, as compose.yaml names it)
# The secrets (DJANGO_SECRET_KEY, POSTGRES_PASSWORD, INFERENCE_METRICS_TOKEN) come from the
# environment or deploy/.env, as with docker compose.
set -eu
cd "$(dirname "$0")/.."
PROJECT="${PROJECT:-inference-platform}"
# shellcheck disable=SC2086
pc() { ${PODMAN_COMPOSE:-podman-compose} -p "$PROJECT" ${COMPOSE_FILES:--f compose.yaml -f compose.debian.yaml} "$@"; }
container() {
  podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n 1
}

pc up -d postgres redis
deadline=$(( $(date +%s) + ${HEALTH_TIMEOUT:-120} ))
for service in postgres redis; do
  until podman healthcheck run "$(container "$service")" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$service is not healthy: podman logs $(container "$service")" >&2; exit 1; }
    sleep 1
  done
done
pc up -d --no-deps migrate
rc="$(podman wait "$(container migrate)")"
[ "$rc" = 0 ] || { podman logs "$(container migrate)" >&2; echo "migrate exited $rc" >&2; exit 1; }
pc up -d --no-deps web worker
echo "up: $(container web) on port ${PORT:-8000}, $(container worker)"
