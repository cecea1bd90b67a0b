#!/usr/bin/env bash
# Start the web server (granian + the ASGI front: inference_platform.serve) and a django-q2
# cluster; Ctrl-C stops both.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
export HOST PORT

pids=()
stop() {
  trap - INT TERM
  echo
  echo "Stopping web server and worker cluster..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  wait
  echo "Stopped."
  exit 0
}
trap stop INT TERM

"$PY" -m inference_platform.serve &
pids+=($!)
"$PY" manage.py qcluster &
pids+=($!)

for _ in $(seq 1 120); do
  if "$PY" - "$HOST" "$PORT" <<'PYEOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/healthz", timeout=1).read()
PYEOF
    echo
    echo "The platform is up: http://$HOST:$PORT/  (admin: http://$HOST:$PORT/admin/, API docs: http://$HOST:$PORT/api/docs/)"
    echo "Press Ctrl-C to stop."
    break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "A process exited during start-up; stopping."; stop; }
  done
  sleep 0.5
done

# Exit when either process dies, taking the other one down too.
wait -n
echo "A process exited; stopping the other."
stop
