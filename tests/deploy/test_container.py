"""deploy/Dockerfile built and run for real, with podman (`make container-test`).

Marked `container`: a build takes minutes, so the default run leaves it out. The image is built
by deploy/images/build.sh (the script behind `make image`), started with a throwaway data
volume, migrated, bootstrapped with the iris demo model and given a key by `manage.py
create_api_key` inside the container; then /healthz and one predict are asked over HTTP, and the
container must stop on `podman stop` within its grace period. With podman-compose, the compose
stack (deploy/compose.yaml with PostgreSQL and Redis built from Debian packages, started by
deploy/images/compose-up.sh) must run a job submitted over HTTP in its worker container.
docs/deploy.md, "Building and running the image with podman".
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
PODMAN = shutil.which("podman")
# The tag `make image` and deploy/compose.yaml use: the compose stack runs what this test built.
IMAGE = "localhost/inference-platform:0.1.0"
COMPOSE = os.environ.get("PODMAN_COMPOSE") or shutil.which("podman-compose")
STOP_GRACE_S = 20

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(PODMAN is None, reason="podman is not installed (apt-get install podman): "
                       "this test builds deploy/Dockerfile and runs the image"),
]


def _podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, key: str = "") -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Api-Key {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def image() -> str:
    build = subprocess.run(["deploy/images/build.sh"], cwd=ROOT, env={**os.environ, "IMAGE": IMAGE},
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, f"the image build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return IMAGE


@pytest.fixture
def container(image):
    name = f"inference-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-data"
    port = _free_port()
    _podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-v", f"{volume}:/data",
            "--stop-timeout", str(STOP_GRACE_S), "-e", "DJANGO_SECRET_KEY=" + uuid.uuid4().hex * 2, image)
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        _podman("rm", "-f", "-t", "0", name, check=False)
        _podman("volume", "rm", "-f", volume, check=False)


def _wait_healthz(name: str, base: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = _http("GET", f"{base}/healthz")
            if status == 200:
                return body
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            logs = _podman("logs", name, check=False)
            pytest.fail(f"/healthz did not answer 200 within {timeout}s; logs:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.5)


def test_the_image_serves_healthz_and_a_predict_with_a_key_made_in_the_container_and_stops_cleanly(container):
    name, base = container
    assert _wait_healthz(name, base).get("status") == "ok"
    for command in (["migrate", "--noinput"], ["bootstrap_demo", "--models", "iris"]):
        _podman("exec", name, "python", "manage.py", *command, timeout=600)
    made = _podman("exec", name, "python", "manage.py", "create_api_key", "--name", "container-test")
    key = made.stdout.strip().splitlines()[-1]

    status, body = _http("POST", f"{base}/api/v1/models/iris/predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]}, key)
    assert status == 200, body
    assert body["model"] == "iris" and body["predictions"][0]["label"] == "setosa"
    # Without the key: refused, as clear JSON.
    status, body = _http("POST", f"{base}/api/v1/models/iris/predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert status in (401, 403) and body["error"]["code"]

    # The image keeps its HEALTHCHECK (podman builds in the docker format) and it passes.
    assert _podman("healthcheck", "run", name, check=False).returncode == 0
    # The image runs as its unprivileged user.
    assert _podman("exec", name, "id", "-u").stdout.strip() == "10001"

    started = time.monotonic()
    _podman("stop", "-t", str(STOP_GRACE_S), name, timeout=STOP_GRACE_S + 30)
    took = time.monotonic() - started
    state = json.loads(_podman("inspect", name).stdout)[0]["State"]
    assert took < STOP_GRACE_S, f"podman stop took {took:.1f}s: the server ignored SIGTERM until SIGKILL"
    # Stopped by SIGTERM and exited by itself (SIGKILL after the grace period would read 137).
    assert state["ExitCode"] in (0, 143), state


@pytest.mark.skipif(COMPOSE is None, reason="podman-compose is not installed (pip install podman-compose into a "
                    "virtualenv and set PODMAN_COMPOSE to its path): the compose stack is not run")
def test_the_compose_stack_runs_a_job_submitted_over_http_in_the_worker_container(image):
    project = f"inference-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    env = {
        **os.environ, "PODMAN_COMPOSE": COMPOSE, "PROJECT": project, "PORT": str(port),
        "DJANGO_SECRET_KEY": uuid.uuid4().hex * 2, "POSTGRES_PASSWORD": uuid.uuid4().hex,
        "INFERENCE_METRICS_TOKEN": uuid.uuid4().hex, "DJANGO_SECURE_SSL_REDIRECT": "false",  # plain HTTP here
    }
    files = ["-f", "compose.yaml", "-f", "compose.debian.yaml"]

    def container(service: str) -> str:
        return _podman("ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--filter",
                       f"label=com.docker.compose.service={service}", "--format", "{{.Names}}").stdout.split()[0]

    try:
        up = subprocess.run(["deploy/images/compose-up.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=1200)
        assert up.returncode == 0, f"compose-up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        web, worker = container("web"), container("worker")
        assert _podman("inspect", container("migrate"), "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
        _podman("exec", web, "python", "manage.py", "bootstrap_demo", "--models", "iris", timeout=600)
        key = _podman("exec", web, "python", "manage.py", "create_api_key", "--name", "compose-test").stdout.split()[-1]
        base = f"http://127.0.0.1:{port}"
        _wait_healthz(web, base)

        instances = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
        status, job = _http("POST", f"{base}/api/v1/models/iris/jobs", {"instances": instances}, key)
        assert status == 202, job
        deadline = time.monotonic() + 120
        while (detail := _http("GET", f"{base}/api/v1/jobs/{job['id']}", key=key)[1])["status"] != "succeeded":
            assert detail["status"] in ("queued", "running") and time.monotonic() < deadline, detail
            time.sleep(0.5)
        status, result = _http("GET", f"{base}/api/v1/jobs/{job['id']}/result", key=key)
        assert status == 200 and [p["label"] for p in result["predictions"]] == ["setosa", "virginica"]
        # The worker container ran it, not the web container.
        processed = f"Processed 'inference.tasks.run_job' (job-{job['id']})"
        worker_logs = _podman("logs", worker)
        assert processed in worker_logs.stdout + worker_logs.stderr
        web_logs = _podman("logs", web)
        assert processed not in web_logs.stdout + web_logs.stderr
    finally:
        # With their anonymous volumes (the image's /data), then the network and named volumes.
        ids = _podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={project}").stdout.split()
        if ids:
            _podman("rm", "-f", "-v", "-t", "30", *ids, check=False)
        subprocess.run([COMPOSE, "-p", project, *files, "down", "-v", "-t", "30"], cwd=ROOT / "deploy", env=env,
                       capture_output=True, timeout=300)
