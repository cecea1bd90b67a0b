#!/bin/sh
# `redis-server [options]`: on all interfaces, protected mode off (as the official image does).
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server "$@" --bind "* -::*" --protected-mode no
fi
exec "$@"
