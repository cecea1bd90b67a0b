"""Jobs end to end: submit latency and jobs/s for small jobs, per broker (`python -m bench.jobs`).

For each stack — SQLite + ORM broker, PostgreSQL + ORM broker, PostgreSQL + Redis broker —
a platform (gunicorn) and `--clusters` `qcluster` processes (each with `--workers` workers;
`--clusters 1,2` measures both) are started; 16 threads submit N one-instance iris jobs
over HTTP; the clock runs from the first submit to the last job finished. PostgreSQL and
Redis must be reachable at the URLs given.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import ROOT, Platform


def _pg_fresh(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    subprocess.run(["psql", url, "-q", "-c", f"DROP DATABASE IF EXISTS {name}"], check=True, capture_output=True)
    subprocess.run(["psql", url, "-q", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return f"{base}/{name}"


def run_stack(label: str, extra_env: dict, jobs: int, threads: int, workers: int, clusters: int = 1) -> dict:
    from .__main__ import iris_artifacts

    # One key submits every job at once: its per-key queued limit is lifted.
    platform = Platform(extra_env={**extra_env, "INFERENCE_WORKERS": str(workers),
                                   "INFERENCE_JOB_MAX_QUEUED_PER_KEY": "1000000"})
    running: list[subprocess.Popen] = []
    try:
        platform.setup()
        path, config = iris_artifacts(Path(tempfile.mkdtemp()))
        platform.register("iris", path, config)
        key = platform.create_key(rate="1000000/s")
        platform.start()
        for _ in range(clusters):
            running.append(subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=platform.env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))
        headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
        body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]})

        def request(conn, method, path, data=None):
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")

        # Warm the workers (torch import, model load) with a few jobs first.
        conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=60)
        warm = [request(conn, "POST", "/api/v1/models/iris/jobs", body)[1] for _ in range(4 * workers * clusters)]
        for job in warm:
            while request(conn, "GET", job["url"])[1]["status"] != "succeeded":
                time.sleep(0.05)
        latencies: list[float] = []
        ids: list[str] = []
        lock = threading.Lock()

        def submitter(n: int) -> None:
            c = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=60)
            for _ in range(n):
                t0 = time.perf_counter()
                status, job = request(c, "POST", "/api/v1/models/iris/jobs", body)
                dt = time.perf_counter() - t0
                assert status == 202, job
                with lock:
                    latencies.append(dt)
                    ids.append(job["id"])

        started = time.perf_counter()
        pool = [threading.Thread(target=submitter, args=(jobs // threads,)) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        submitted = time.perf_counter()
        remaining = set(ids)
        while remaining:
            status, page = request(conn, "GET", "/api/v1/jobs?status=succeeded&limit=500")
            done = {j["id"] for j in page["jobs"]}
            remaining -= done
            if remaining:
                time.sleep(0.1)
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"{len(remaining)} jobs unfinished")
        finished = time.perf_counter()
        latencies.sort()
        return {
            "stack": label,
            "clusters": clusters,
            "workers": workers,
            "jobs": len(ids),
            "jobs_per_s": len(ids) / (finished - started),
            "submit_per_s": len(ids) / (submitted - started),
            "submit_p50_ms": 1000 * latencies[len(latencies) // 2],
            "submit_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        }
    finally:
        for cluster in running:
            os.killpg(cluster.pid, signal.SIGTERM)
        for cluster in running:
            try:
                cluster.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(cluster.pid, signal.SIGKILL)
        platform.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=320)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="worker processes per qcluster")
    ap.add_argument("--clusters", default="1", help="qcluster processes, e.g. 1,2 to compare")
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--stacks", default="sqlite-orm,postgres-orm,postgres-redis")
    args = ap.parse_args()
    secret = "bench-" + "x" * 60
    stacks = {
        "sqlite-orm": {},
        "postgres-orm": {"DATABASE_URL": "", "DJANGO_SECRET_KEY": secret, "DJANGO_SECURE_SSL_REDIRECT": "false"},
        "postgres-redis": {"DATABASE_URL": "", "REDIS_URL": args.redis, "INFERENCE_BROKER": "redis",
                           "DJANGO_SECRET_KEY": secret, "DJANGO_SECURE_SSL_REDIRECT": "false"},
    }
    rows = []
    for label in args.stacks.split(","):
        for clusters in [int(c) for c in args.clusters.split(",")]:
            env = dict(stacks[label])
            if "DATABASE_URL" in env:
                env["DATABASE_URL"] = _pg_fresh(args.postgres, f"bench_jobs_{label.replace('-', '_')}")
            if "REDIS_URL" in env:
                import redis

                redis.Redis.from_url(env["REDIS_URL"]).flushdb()
            row = run_stack(label, env, args.jobs, args.threads, args.workers, clusters)
            print(row, flush=True)
            rows.append(row)
    print(f"\n{args.jobs} one-instance iris jobs, {args.threads} submitting threads, {args.workers} workers per "
          f"qcluster, 1 web process:\n")
    print("| stack | qclusters | jobs/s end to end | submits/s | submit p50 ms | submit p99 ms |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stack']} | {r['clusters']} | {r['jobs_per_s']:.1f} | {r['submit_per_s']:.1f} | "
              f"{r['submit_p50_ms']:.1f} | {r['submit_p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
