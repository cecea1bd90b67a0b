# The two commands: `make run` (set up and start the platform with demo models) and
# `make test` (the whole test suite; .ci/run calls it). Both create .venv themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: run test bench soak lint clean chromium wrk image container-test compose-up

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.run-installed: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(VENV)/.run-installed $@

run: $(VENV)/.run-installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v 0
	$(PY) manage.py bootstrap_demo --url http://$(HOST):$(PORT)
	PY=$(PY) deploy/run.sh

test: $(VENV)/.dev-installed chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The admin's browser tests drive Debian's chromium with Playwright (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed and could not be installed: the browser tests will fail (apt-get install chromium)"

bench: $(VENV)/.dev-installed wrk
	$(PY) -m bench $(BENCH_ARGS)

# The benchmarks' load generator: Debian's wrk.
wrk:
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; }; }; } || \
	  { echo "wrk is not installed and could not be installed (apt-get install wrk)"; exit 1; }

# With DATABASE_URL (PostgreSQL) and REDIS_URL set, and as root, this includes the multi-host test
# (tests/deploy/test_multihost.py: worker hosts in network namespaces, one cut off mid-job).
soak: $(VENV)/.dev-installed
	$(PY) -m pytest -m soak tests/robustness tests/deploy $(PYTEST_ARGS)

# The container image (deploy/Dockerfile) built with podman, or docker: IMAGE=..., BASE_IMAGE=...
# (default python:3.11-slim-trixie, or where it cannot be pulled a Debian base made with mmdebstrap).
# deploy/images/build.sh and docs/deploy.md, "Building and running the image with podman".
image:
	deploy/images/build.sh

# Builds the image and runs it (healthz, a predict, podman stop), and with podman-compose the
# compose stack (a job done in the worker container). Minutes: not part of `make test`.
container-test: $(VENV)/.dev-installed
	$(PY) -m pytest -m container tests/deploy/test_container.py $(PYTEST_ARGS)

# deploy/compose.yaml with podman-compose (PostgreSQL and Redis from Debian packages), started in order.
compose-up:
	deploy/images/compose-up.sh

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) var
