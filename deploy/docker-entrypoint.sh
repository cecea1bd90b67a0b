#!/bin/sh
# The container's entrypoint: `web` (the default: gunicorn), `worker` (a django-q2
# cluster), `migrate` (the release step); anything else runs as given.
set -eu
case "${1:-web}" in
  web)
    shift || true
    exec gunicorn -c deploy/gunicorn.conf.py inference_platform.wsgi:application "$@"
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
