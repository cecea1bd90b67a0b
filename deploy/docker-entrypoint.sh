#!/bin/sh
# The container's entrypoint: `web` (the default: the web server, granian + the front), `worker` (a django-q2
# cluster), `migrate` (the release step); anything else runs as given.
set -eu
case "${1:-web}" in
  web)
    exec python -m inference_platform.serve
    ;;
  worker)
    exec python manage.py qcluster
    ;;
  migrate)
    exec python manage.py migrate --noinput
    ;;
  *)
    exec "$@"
    ;;
esac
