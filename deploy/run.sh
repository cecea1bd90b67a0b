#!/usr/bin/env bash
# Start the web server (granian + the front: inference_platform.serve) and a django-q2
# cluster; Ctrl-C stops both.
#
# Stopping: SIGINT or SIGTERM to this script, or to its whole process group (Ctrl-C, `kill --
# -PGID`), is forwarded once to each child, which gets STOP_TIMEOUT seconds (default 40: above
# INFERENCE_WORKER_STOP_TIMEOUT and WEB_GRACEFUL_TIMEOUT) before it and what it started are
# SIGKILLed. Each child runs in its own process group (set -m), so that a group signal reaches
# the children once, from here. (Under systemd, KillMode=control-group signals every process
# itself: `manage.py qcluster` survives that too, see inference/jobs/cluster.py.)
set -uo pipefail
set -m
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
export HOST PORT

STOP_TIMEOUT=${STOP_TIMEOUT:-40}

pids=()
stop() {
  trap '' INT TERM  # a second signal while stopping changes nothing
  echo
  echo "Stopping web server and worker cluster..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  local deadline=$((SECONDS + STOP_TIMEOUT)) pid alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    ((${#alive[@]})) || break
    if ((SECONDS >= deadline)); then
      echo "Still running after ${STOP_TIMEOUT} s (STOP_TIMEOUT): killing ${alive[*]} and what they started."
      for pid in "${alive[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
      break
    fi
    sleep 0.2
  done
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
