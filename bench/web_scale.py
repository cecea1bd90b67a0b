"""Predict req/s with 1 and 2 web processes on one machine (`python -m bench.web_scale`).

One gunicorn with WEB_CONCURRENCY=1, then one with WEB_CONCURRENCY=2, on PostgreSQL and
Redis (several web processes need the shared cache); wrk posts one-instance predictions
of the iris model (per-request overhead dominates: HTTP, auth, rate limit, parsing) and of
the 512-4096-4096-10 MLP with 32 instances per request (compute dominates). Rounds
alternate between the two settings so that a noisy minute hits both. Each setting is warmed
until every process has loaded the models (its /metrics counts one load per process).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from .common import Platform, mlp_body, mlp_config, run_wrk, write_mlp_safetensors
from .jobs import _pg_fresh


def start(processes: int, env: dict, artifacts: dict) -> tuple[Platform, str]:
    platform = Platform(threads=16, extra_env={**env, "WEB_CONCURRENCY": str(processes),
                                               "DATABASE_URL": _pg_fresh(env["DATABASE_URL"],
                                                                         f"bench_web_{processes}")})
    platform.setup()
    for model, (path, config) in artifacts.items():
        platform.register(model, path, config)
    key = platform.create_key(rate="100000000/s")
    platform.start()
    headers = {"Authorization": f"Api-Key {key}"}
    deadline = time.time() + 120
    for model, body in (("iris", IRIS_BODY), ("mlp", mlp_body(32))):
        while True:  # until each process has loaded the model
            run_wrk(f"{platform.url}/api/v1/models/{model}/predict", body, headers, connections=8, seconds=1)
            m = platform.metrics()
            loads = sum(v for (n, lab), v in m.items()
                        if n == "inference_model_load_duration_seconds_count" and dict(lab).get("model") == model)
            if loads >= processes:
                break
            if time.time() > deadline:
                raise RuntimeError(f"only {loads} of {processes} processes loaded {model}")
    return platform, key


IRIS_BODY = '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    from .__main__ import iris_artifacts

    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    artifacts = {"iris": iris_artifacts(work),
                 "mlp": (write_mlp_safetensors(work / "mlp.safetensors"), mlp_config(32, 2.0))}
    env = {"DATABASE_URL": args.postgres, "REDIS_URL": args.redis, "INFERENCE_BROKER": "redis",
           "DJANGO_SECRET_KEY": "bench-" + "x" * 60, "DJANGO_SECURE_SSL_REDIRECT": "false"}
    import redis

    redis.Redis.from_url(args.redis).flushdb()
    servers = {n: start(n, env, artifacts) for n in (1, 2)}
    results: dict[tuple[str, int], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for model, body in (("iris", IRIS_BODY), ("mlp", mlp_body(32))):
                for n, (platform, key) in servers.items():
                    r = run_wrk(f"{platform.url}/api/v1/models/{model}/predict", body,
                                {"Authorization": f"Api-Key {key}"}, connections=args.connections,
                                seconds=args.seconds, threads=2)
                    assert r.non_2xx == 0, r
                    results.setdefault((model, n), []).append(r.rps)
                    print(model, n, f"{r.rps:.0f} req/s p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms", flush=True)
    finally:
        for platform, _ in servers.values():
            platform.cleanup()
    print(f"\ncpus: {os.cpu_count()}, wrk: 2 threads, {args.connections} connections, {args.seconds} s x "
          f"{args.rounds} rounds (medians)\n")
    print("| model, instances/request | 1 web process req/s | 2 web processes req/s | ratio |\n|---|---|---|---|")
    for model, label in (("iris", "iris, 1"), ("mlp", "MLP 512-4096-4096-10, 32")):
        one, two = statistics.median(results[(model, 1)]), statistics.median(results[(model, 2)])
        print(f"| {label} | {one:.0f} | {two:.0f} | {two / one:.2f} |")


if __name__ == "__main__":
    main()
