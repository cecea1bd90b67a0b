"""Real platform processes on the test database: a `manage.py qcluster` and the web server.

Both run with the test process's database (SQLite file or PostgreSQL) and a data dir whose
``media`` folder the test shares (settings.MEDIA_ROOT), so that they see the rows and
artifacts the test commits (tests using them need ``transaction=True``). With REDIS_URL
set they share the Redis cache (and broker) too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings as django_settings
from django.db import connection


def database_url() -> str:
    """The test database as a DATABASE_URL for a child process."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A platform process started with the test database and data dir; stopped with its process group."""

    log_name = "process.log"
    stop_timeout = 10.0  # seconds a SIGTERM gets before SIGKILL

    def __init__(self, media_root: Path, env: dict[str, str] | None = None):
        self.media_root = media_root
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.media_root.parent / self.log_name

    def env(self) -> dict[str, str]:
        env = dict(os.environ, DJANGO_LOG_LEVEL="WARNING", **self.extra_env)
        env.update(
            DATABASE_URL=database_url(),
            INFERENCE_DATA_DIR=str(self.media_root.parent),
            DJANGO_SECRET_KEY=django_settings.SECRET_KEY,
            DJANGO_DEBUG="false",
            DJANGO_SECURE_SSL_REDIRECT="false",
        )
        return env

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.media_root.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(), cwd=django_settings.BASE_DIR, env=self.env(), stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(self.stop_timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # children left behind by a process that did not stop in time
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)
        self.proc = None
        self.log.close()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


class Cluster(Process):
    """`manage.py qcluster`: the django-q2 workers."""

    log_name = "qcluster.log"
    stop_timeout = 3.0  # its graceful stop can take longer than a test is worth; nothing is lost by killing it

    def command(self) -> list[str]:
        return [sys.executable, "manage.py", "qcluster"]


class WebServer(Process):
    """The web server as `make run` starts it (`python -m inference_platform.serve`: granian + the front), on a free port."""

    log_name = "web.log"
    name = "the web server"

    def __init__(self, media_root: Path, env: dict[str, str] | None = None):
        super().__init__(media_root, env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        # One web process unless a test asks for more (the default, inference_platform.serve's
        # default_workers, is tested on its own): fewer processes to start and stop per test.
        return {"WEB_CONCURRENCY": "1", **super().env(), "HOST": "127.0.0.1", "PORT": str(self.port)}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "inference_platform.serve"]

    def start(self, timeout: float = 60) -> None:
        super().start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s:\n{self.log_tail()}")

    def workers(self) -> list[int]:
        """The pids of the web processes (the server's children)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]


class Gunicorn(WebServer):
    """The platform under a WSGI server instead (deploy/gunicorn.conf.py, `inference_platform.wsgi:application`)."""

    log_name = "gunicorn.log"
    name = "gunicorn"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / "gunicorn"), "-c", "deploy/gunicorn.conf.py",
                "inference_platform.wsgi:application"]
