"""Start the web server: granian serving the front (`inference_platform.asgi:application`).

    python -m inference_platform.serve        # what `make run`, the Procfile and the container run

Environment:
  HOST, PORT              where to listen (127.0.0.1:8000)
  WEB_CONCURRENCY         web processes (default 2 where 2 or more cores are usable, CPU quota
                          included, else 1)
  WEB_THREADS             threads per process for the routes other than predict/infer (8)
  WEB_GRACEFUL_TIMEOUT    seconds a stopping process gets to finish its requests (20)
  WEB_BACKLOG             connections waiting to be accepted (1024)
  WEB_LOG_LEVEL           the server's own log level (warning; the platform logs through Django)
  WEB_LOOP                each process's event loop: uvloop (the default) or asyncio
  WEB_INTERFACE           how granian calls the front: rsgi (granian's own, the default) or asgi

Each process loads the models it serves lazily (after start: CUDA cannot be initialised
before a fork). This module imports neither Django nor torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _quota(quota: str, period: str) -> float | None:
    """CPUs a quota allows ("max" or a negative quota: none)."""
    if quota == "max" or int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def cpu_quota() -> float | None:
    """The CPUs this process's cgroup may use (``docker run --cpus``, a Kubernetes CPU limit, systemd's
    CPUQuota), the lowest quota of its cgroup and its parents; None without one. cgroup v2 (``cpu.max``)
    and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``). A container mounts its own cgroup at the
    root of /sys/fs/cgroup, so the root is read too.

    joblib.cpu_count reads the same files, but importing joblib imports numpy, which starts OpenBLAS's
    thread in this launcher before it forks the web processes."""
    candidates: list[tuple[Path, str]] = []  # (directory, controller version)
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mounts = [(CGROUP_ROOT, "v2")]
        elif "cpu" in controllers.split(","):
            mounts = [(CGROUP_ROOT / name, "v1") for name in (controllers, "cpu", "cpu,cpuacct")]
        else:
            continue
        parts = Path(path).parts[1:]
        for mount, version in mounts:
            candidates += [(mount.joinpath(*parts[:i]), version) for i in range(len(parts), -1, -1)]
    limits = []
    for directory, version in dict.fromkeys(candidates):
        try:
            if version == "v2":
                limit = _quota(*(directory / "cpu.max").read_text().split()[:2])
            else:
                limit = _quota((directory / "cpu.cfs_quota_us").read_text().strip(),
                               (directory / "cpu.cfs_period_us").read_text().strip())
        except (OSError, ValueError, TypeError):
            continue
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def usable_cores() -> int:
    """The CPUs this process may run on: its CPU affinity, and its cgroup's CPU quota rounded up (1.5
    CPUs count as 2), whichever is lower."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def default_workers() -> int:
    """Two web processes where there are two usable cores to run them, else one.

    One process's Python (HTTP parsing, auth, JSON, pipelines) runs under one GIL, so a
    second process puts a second core to work (docs/benchmarks.md). Not more by default:
    each process holds its own copy of every model it serves (set WEB_CONCURRENCY to choose).
    A container limited to one CPU on a larger host gets one: a second process would only
    share that CPU with the first (docs/benchmarks.md, "the Intel Xeon machine").
    """
    return 2 if usable_cores() >= 2 else 1


def metrics_dir(workers: int) -> Path | None:
    """Several processes keep their Prometheus metrics in files that /metrics adds up.

    The directory (PROMETHEUS_MULTIPROC_DIR, else <data dir>/prometheus) is emptied at
    start: files of a previous run would be counted again. Set before the processes start
    and import prometheus_client.
    """
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if workers <= 1 and not configured:
        return None
    if configured:
        path = Path(configured)
    else:
        data_dir = Path(os.environ.get("INFERENCE_DATA_DIR", "var"))
        path = (data_dir if data_dir.is_absolute() else ROOT / data_dir) / "prometheus"
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)
    return path


LOOPS = ("uvloop", "asyncio")  # each web process's event loop (WEB_LOOP), the default first
# How granian calls the front (WEB_INTERFACE). RSGI by default: a prediction's body in one await and
# its response in one call, for less CPU per request than ASGI's message per event (docs/benchmarks.md).
# granian's own RSGI stream does not wait for a slow client; the front does not use it (a local file
# goes by its path, any other streamed body through a pipe: ``protocols.AsgiChannels``). ASGI is
# there for running the same application under another ASGI server's rules.
INTERFACES = ("rsgi", "asgi")


def choice(name: str, choices: tuple[str, ...]) -> str:
    """The environment variable `name`, one of `choices` (the first unless set); else exit saying which."""
    value = os.environ.get(name, choices[0]).strip().lower()
    if value not in choices:
        raise SystemExit(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


def server(**overrides):
    """The granian server as configured by the environment (``overrides`` win)."""
    from granian import Granian
    from granian.constants import Interfaces

    workers = int(os.environ.get("WEB_CONCURRENCY") or default_workers())
    metrics_dir(workers)
    options = dict(
        target="inference_platform.asgi:application",
        address=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        interface=Interfaces.RSGI if choice("WEB_INTERFACE", INTERFACES) == "rsgi" else Interfaces.ASGI,
        # uvloop: less CPU per request than asyncio's own loop on the request path's many small
        # awaits and cross-thread wake-ups (docs/benchmarks.md, 2026-12-04 evening).
        loop=choice("WEB_LOOP", LOOPS),
        workers=workers,
        websockets=False,
        backlog=int(os.environ.get("WEB_BACKLOG", "1024")),
        log_level=os.environ.get("WEB_LOG_LEVEL", "warning"),
        # On SIGTERM (a deploy, a pod being stopped) processes finish the requests in flight
        # for up to this long; keep it below the orchestrator's grace period (deploy/k8s: 30 s).
        workers_kill_timeout=int(os.environ.get("WEB_GRACEFUL_TIMEOUT", "20")),
        respawn_failed_workers=True,
        working_dir=ROOT,
    )
    options.update(overrides)
    return Granian(**options)


def main() -> None:
    server().serve()


if __name__ == "__main__":
    main()
