"""The issue's measure of canary splits and shadow traffic over HTTP (`python -m bench.shadow`).

The wide MLP of the benchmarks (512-4096-4096-10) registered twice in one platform (`make run`'s
server, its default web processes), v1 and v2 with other weights:

(a) `production` as a 90/10 split of v1 and v2; `--requests` one-instance predictions over HTTP
    (8 client threads, keep-alive), counting the `version` each response names: the share of v2
    against its weight (target: within +-1 %).
(b) wrk at `--connections` (32) against `production` = v1 alone, then v1 with v2 as a 20 % shadow,
    rounds alternating in one run (a slow minute on this shared machine hits both); the medians of
    throughput and client-side p99, and their ratio (target: under 10 % lower with the shadow). The
    shadow's own figures come from /metrics (inference_shadow_*: compared, dropped, failed, agreement).

Results are recorded by hand in docs/registry.md ("Shadow traffic") and docs/benchmarks.md.

    python -m bench.shadow [--requests 10000] [--seconds 15] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from .common import MLP_ARGS, Platform, mlp_body, mlp_config, run_wrk, write_mlp_safetensors


def write_other_mlp(path: Path, seed: int) -> Path:
    """The same architecture as write_mlp_safetensors, other weights."""
    import torch
    from safetensors.torch import save_file

    from registry.architectures import MLP

    torch.manual_seed(seed)
    model = MLP(**MLP_ARGS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def put_alias(platform: Platform, key: str, body: dict, alias: str = "production") -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=30)
    conn.request("PUT", f"/api/v1/models/mlp/aliases/{alias}", json.dumps(body),
                 {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
    r = conn.getresponse()
    data = json.loads(r.read())
    if r.status != 200:
        raise RuntimeError(f"PUT alias: {r.status} {data}")
    return data


def count_versions(platform: Platform, key: str, n: int, clients: int = 8) -> Counter:
    """`n` predictions through `production`, from `clients` keep-alive threads: the `version` of each answer."""
    body = mlp_body(1)
    counts: Counter = Counter()
    lock = threading.Lock()
    share = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]

    def client(m: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=60)
        mine: Counter = Counter()
        for _ in range(m):
            conn.request("POST", "/api/v1/models/mlp/predict", body,
                         {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            mine[json.loads(data)["version"] if r.status == 200 else f"status {r.status}"] += 1
        with lock:
            counts.update(mine)

    threads = [threading.Thread(target=client, args=(m,)) for m in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def split_share(platform: Platform, manage_key: str, infer_key: str, requests: int) -> None:
    put_alias(platform, manage_key, {"split": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]})
    time.sleep(2)  # every web process sees the move (the registry generation, polled every 0.5 s)
    count_versions(platform, infer_key, 200)  # both versions loaded in each process
    t0 = time.perf_counter()
    counts = count_versions(platform, infer_key, requests)
    seconds = time.perf_counter() - t0
    n = sum(counts.values())
    share = counts[2] / n
    print(f"(a) 90/10 split, {n} requests in {seconds:.1f} s: v1 {counts[1]} ({counts[1] / n:.2%}), "
          f"v2 {counts[2]} ({share:.2%}); error {abs(share - 0.10):.2%} "
          f"({'within' if abs(share - 0.10) <= 0.01 else 'OUTSIDE'} +-1 %); "
          f"other answers: {dict((k, v) for k, v in counts.items() if k not in (1, 2)) or 'none'}", flush=True)


def shadow_metrics(platform: Platform) -> dict[str, float]:
    out: Counter = Counter()
    for (name, labels), value in platform.metrics().items():
        labels = dict(labels)
        if name == "inference_shadow_requests_total":
            out[labels["outcome"]] += value
        elif name == "inference_shadow_predictions_total":
            out[labels["agreement"]] += value
        elif name == "inference_shadow_abs_diff_total":
            out["abs_diff"] += value
        elif name == "inference_shadow_diff_elements_total":
            out["elements"] += value
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--percent", type=int, default=20)
    ap.add_argument("--no-split", action="store_true", help="skip (a), the 90/10 split")
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")
    workdir = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    v1_path = write_mlp_safetensors(workdir / "v1.safetensors")
    v2_path = write_other_mlp(workdir / "v2.safetensors", seed=1)
    platform = Platform()
    try:
        platform.setup()
        config = mlp_config(32, 5.0, 1024)
        platform.register("mlp", v1_path, config, alias="production")
        platform.register("mlp", v2_path, config, alias="candidate")
        infer_key = platform.create_key(rate="100000000/s")
        manage_key = platform.manage("create_api_key", "--name", "deploy", "--scope", "manage",
                                     "--rate", "100000/s").strip().splitlines()[-1]
        platform.start()
        headers = {"Authorization": f"Api-Key {infer_key}"}
        url = f"{platform.url}/api/v1/models/mlp/predict"
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                           if line.startswith("Model name")), "?")
        print(f"{time.strftime('%Y-%m-%d')}  {model_name}, {os.cpu_count()} cores, "
              f"WEB_CONCURRENCY={os.environ.get('WEB_CONCURRENCY', 'default')}", flush=True)

        # (a) a 90/10 split over HTTP
        if not args.no_split:
            split_share(platform, manage_key, infer_key, args.requests)

        # (b) throughput and p99 with and without a shadow, alternating
        body = mlp_body(1)
        plain, shadowed = {"version": 1}, {"version": 1, "shadow": {"version": 2, "percent": args.percent}}
        results: dict[str, list] = {"no shadow": [], f"{args.percent} % shadow": []}
        for setting in (plain, shadowed):  # warm both (the shadow thread, v2 in each process)
            put_alias(platform, manage_key, setting)
            time.sleep(2)
            run_wrk(url, body, headers, connections=args.connections, seconds=3)
        before = shadow_metrics(platform)
        for round_ in range(args.rounds):
            for name, setting in zip(results, (plain, shadowed)):
                put_alias(platform, manage_key, setting)
                time.sleep(2)
                r = run_wrk(url, body, headers, connections=args.connections, seconds=args.seconds)
                results[name].append(r)
                print(f"  round {round_ + 1} {name:>13}: {r.rps:7.1f} req/s  p50 {r.p50_ms:6.1f} ms  "
                      f"p99 {r.p99_ms:6.1f} ms  non-2xx {r.codes()}", flush=True)
        time.sleep(1)
        after = shadow_metrics(platform)
        medians = {name: (statistics.median(r.rps for r in rs), statistics.median(r.p99_ms for r in rs))
                   for name, rs in results.items()}
        (rps0, p99_0), (rps1, p99_1) = medians.values()
        print(f"(b) c={args.connections}, {args.rounds} rounds of {args.seconds} s each, medians:")
        for name, (rps, p99) in medians.items():
            print(f"  {name:>13}: {rps:7.1f} req/s  p99 {p99:6.1f} ms")
        print(f"  throughput with the shadow: {rps1 / rps0:.3f} of without ({(1 - rps1 / rps0):.1%} lower; "
              f"target under 10 %: {'met' if rps1 / rps0 > 0.9 else 'MISSED'}); p99 {p99_1 / p99_0:.2f}x")
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
        copies = delta.get("compared", 0) + delta.get("dropped", 0) + delta.get("failed", 0)
        served = sum(r.requests for r in results[f"{args.percent} % shadow"])
        agreed, disagreed = delta.get("agreed", 0), delta.get("disagreed", 0)
        print(f"  shadow copies during the shadowed rounds: {copies:.0f} of {served} requests "
              f"({copies / served:.1%}): compared {delta.get('compared', 0):.0f}, dropped (queue full) "
              f"{delta.get('dropped', 0):.0f}, failed {delta.get('failed', 0):.0f}; agreement "
              f"{agreed / (agreed + disagreed) if agreed + disagreed else float('nan'):.3f}, mean abs diff "
              f"{delta.get('abs_diff', 0) / delta['elements'] if delta.get('elements') else float('nan'):.4g}")
    finally:
        platform.cleanup()


if __name__ == "__main__":
    sys.exit(main())
