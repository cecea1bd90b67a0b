"""Processes the tests start: one way to start a command on the test database, log it and stop it.

A ``Process`` runs its command in a session of its own (one process group: the command and what
it forks) with the test run's database (``database_url()``: the SQLite file or the PostgreSQL
test database) and a data dir whose ``media`` folder the test shares (settings.MEDIA_ROOT), so
that it sees the rows and artifacts the test commits (tests that use one need
``transaction=True``); with REDIS_URL set it shares the Redis cache and broker too. Its output
goes to a log file in the data dir (``log_tail()`` for failure messages). ``stop()`` sends the
group SIGTERM, then SIGKILL to whatever is left after ``stop_timeout``; ``kill()`` is a crash.

    Cluster      manage.py qcluster (the django-q2 workers)
    WebServer    python -m inference_platform.serve (granian + the front), on a free port
    Gunicorn     the WSGI deployment (deploy/gunicorn.conf.py), on a free port

``env`` overrides any variable of the environment built here (the database too); ``prefix`` runs
the command through another that execs it in place (``ip netns exec NS unshare --uts ...``:
tests/deploy/test_multihost.py); ``command`` starts any other command the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
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


def _live_pids(field: int, value: int) -> set[int]:
    """Live processes (not zombies) whose /proc/PID/stat field `field` (after the command) equals `value`."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value and fields[0] not in ("Z", "X"):
            pids.add(int(stat.parent.name))
    return pids


def group_pids(pgid: int) -> set[int]:
    """The live processes of a process group (e.g. a qcluster and the workers it forked); not zombies."""
    return _live_pids(2, pgid)


def session_pids(sid: int) -> set[int]:
    """The live processes of a session (deploy/run.sh puts each child in a process group of its own)."""
    return _live_pids(3, sid)


class Process:
    """A command started with the test database and data dir, logged to a file, stopped with its
    process group. Subclasses provide command() and, if it takes a while to serve, ready()."""

    log_name = "process.log"  # in the data dir (media_root's parent)
    name = "the process"  # in error messages
    stop_timeout = 10.0  # seconds a SIGTERM gets before SIGKILL

    def __init__(self, media_root: Path, env: dict[str, str] | None = None, *, command: Sequence[str] | None = None,
                 prefix: Sequence[str] = (), log_name: str | None = None):
        self.media_root = Path(media_root)
        self.extra_env = dict(env or {})
        self._command = list(command) if command is not None else None
        self.prefix = list(prefix)
        if log_name is not None:
            self.log_name = log_name
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def log_path(self) -> Path:
        return self.media_root.parent / self.log_name

    @property
    def pid(self) -> int:
        """The pid of the command (with a prefix that execs in place, the command's own), which is
        also its process group's id."""
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_LOG_LEVEL": "WARNING",
            "DATABASE_URL": database_url(),
            "INFERENCE_DATA_DIR": str(self.media_root.parent),
            "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
            "DJANGO_DEBUG": "false",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            **self.extra_env,
        }

    def command(self) -> list[str]:
        if self._command is None:
            raise NotImplementedError("subclasses of Process must provide a command() method")
        return self._command

    def ready(self) -> bool:
        """Return whether the started process serves yet (start() waits for it)."""
        return True

    def start(self, timeout: float = 60) -> None:
        """Start the command and wait (up to `timeout` seconds) until it is ready; RuntimeError with
        the log's tail (the process stopped) if it exits or is not ready in time."""
        self.media_root.mkdir(parents=True, exist_ok=True)
        if self._log is not None:  # started again after a kill()
            self._log.close()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, *self.command()], cwd=django_settings.BASE_DIR, env=self.env(), stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                problem = f"exited with {self.proc.returncode}"
            elif self.ready():
                return
            elif time.monotonic() > deadline:
                problem = f"was not ready within {timeout} s"
            else:
                time.sleep(0.1)
                continue
            self.stop()
            raise RuntimeError(f"{self.name} {problem}:\n{self.log_tail()}")

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the process group (nothing if it is gone)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        """Wait for the command to exit; return its exit status (TimeoutExpired after `timeout` s)."""
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process group now (a crash) and reap the command; `pid` stays readable."""
        self.signal_group(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the process group, give it `timeout` (stop_timeout) seconds, then SIGKILL what is
        left; return the command's exit status (None when it was not started)."""
        if self.proc is None:
            return None
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            pass
        self.signal_group(signal.SIGKILL)  # children left behind by a process that did not stop in time
        status = self.proc.wait(5)
        self.proc = None
        self._log.close()
        self._log = None
        return status

    def pids(self) -> set[int]:
        """The live processes of its group: the command and what it forked."""
        return group_pids(self.pid)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


class Cluster(Process):
    """`manage.py qcluster`: the django-q2 workers."""

    log_name = "qcluster.log"
    name = "the qcluster"
    stop_timeout = 3.0  # its graceful stop can take longer than a test is worth; nothing is lost by killing it

    def command(self) -> list[str]:
        return [sys.executable, "manage.py", "qcluster"]


class WebServer(Process):
    """The web server as `make run` starts it (`python -m inference_platform.serve`: granian + the
    front), on a free port; ready once it answers /healthz."""

    log_name = "web.log"
    name = "the web server"

    def __init__(self, media_root: Path, env: dict[str, str] | None = None, **kwargs):
        super().__init__(media_root, env, **kwargs)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        # One web process unless a test asks for more (the default, inference_platform.serve's
        # default_workers, is tested on its own): fewer processes to start and stop per test.
        return {"WEB_CONCURRENCY": "1", **super().env(), "HOST": "127.0.0.1", "PORT": str(self.port)}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "inference_platform.serve"]

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/healthz", timeout=1).read()
        except OSError:
            return False
        return True

    def workers(self) -> list[int]:
        """The pids of the web processes (the server's children)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(pid) for pid in children]


class Gunicorn(WebServer):
    """The platform under a WSGI server instead (deploy/gunicorn.conf.py, `inference_platform.wsgi:application`)."""

    log_name = "gunicorn.log"
    name = "gunicorn"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / "gunicorn"), "-c", "deploy/gunicorn.conf.py",
                "inference_platform.wsgi:application"]
