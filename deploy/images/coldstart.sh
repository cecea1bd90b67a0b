#!/bin/sh
# Cold start of the image: seconds from `podman run -d` to the first 200 predict, with a /data
# volume already migrated and holding the iris demo model (docs/deploy.md). Then `podman stop`'s
# time and the exit code. Usage: deploy/images/coldstart.sh [IMAGE] [RUNS]; PORT (default 18702).
set -eu
IMAGE="${1:-localhost/inference-platform:0.1.0}"
RUNS="${2:-3}"
PORT="${PORT:-18702}"
name="coldstart-$$"
volume="$name-data"
secret="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
now() { python3 -c 'import time; print(time.monotonic())'; }
trap 'podman rm -f -v "$name" >/dev/null 2>&1 || true; podman volume rm -f "$volume" >/dev/null 2>&1 || true' EXIT
key="$(podman run --rm -e DJANGO_SECRET_KEY="$secret" -v "$volume:/data" "$IMAGE" sh -c \
  'python manage.py migrate --noinput >/dev/null && python manage.py bootstrap_demo --models iris >/dev/null &&
   python manage.py create_api_key --name coldstart | tail -n 1')"
for run in $(seq "$RUNS"); do
  t0="$(now)"
  podman run -d --name "$name" -p "127.0.0.1:$PORT:8000" -e DJANGO_SECRET_KEY="$secret" -v "$volume:/data" "$IMAGE" >/dev/null
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/api/v1/models/iris/predict" \
      -H "Authorization: Api-Key $key" -H 'Content-Type: application/json' \
      -d '{"instances": [[5.1, 3.5, 1.4, 0.2]]}')" = 200 ]; do sleep 0.1; done
  t1="$(now)"
  podman stop -t 20 "$name" >/dev/null
  t2="$(now)"
  python3 -c "print(f'run $run: first 200 predict after {$t1 - $t0:.2f} s; podman stop {$t2 - $t1:.2f} s, exit code', end=' ')"
  podman inspect "$name" --format '{{.State.ExitCode}}'
  podman rm -v "$name" >/dev/null
done
