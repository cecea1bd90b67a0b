"""What monitoring costs on the v1 predict path: metrics + access log + request records on vs off.

Two platform instances (gunicorn, 1 process, 32 threads, SQLite, each in its own data dir)
serve the demo iris model: one as deployed (INFERENCE_MONITORING_ENABLED on: Prometheus
metrics, one JSON access line per request written to the server's log file, request
records buffered and bulk-written by the background thread), one with
INFERENCE_MONITORING_ENABLED=false. wrk drives them in alternating rounds (A B A B ...),
so a slow minute on this shared machine hits both alike; the report gives medians and the
ratio, and checks that the monitored instance really wrote every record and log line.

    python -m bench.monitoring [--seconds 10] [--rounds 4] [--connections 1,16] [--variants on,off]
                               [--artifact F --config C]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .common import Platform, child_pids, run_wrk


def cpu_seconds(platform: Platform) -> float:
    """CPU time (user + system, all threads) the platform's gunicorn worker(s) have used so far."""
    total = 0.0
    for pid in child_pids(platform.proc.pid):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total

VARIANTS = {
    "on": {},  # as deployed
    "off": {"INFERENCE_MONITORING_ENABLED": "false"},
    # to find where the cost is:
    "metrics": {"INFERENCE_REQUEST_RECORDS": "false", "INFERENCE_ACCESS_LOG": "false"},
    "metrics+log": {"INFERENCE_REQUEST_RECORDS": "false"},
    "metrics+records": {"INFERENCE_ACCESS_LOG": "false"},
}


def iris(workdir: Path) -> tuple[Path, dict]:
    from .__main__ import iris_artifacts

    return iris_artifacts(workdir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--connections", default="16", help="comma list of wrk connection counts, e.g. 1,16")
    ap.add_argument("--artifact", help="an iris safetensors file (default: train the demo model now)")
    ap.add_argument("--config", help="its register_model config (JSON), with --artifact")
    ap.add_argument("--variants", default="on,off",
                    help="instances to compare, from: " + ", ".join(VARIANTS) + " (ratios are to off)")
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if args.artifact:
        artifact, config = Path(args.artifact).resolve(), json.loads(Path(args.config).read_text())
    else:
        artifact, config = iris(Path(tempfile.mkdtemp(prefix="bench-monitoring-")))
    platforms = {name: Platform(extra_env=VARIANTS[name]) for name in args.variants.split(",")}
    conns = [int(c) for c in args.connections.split(",")]
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]})
    results: dict[tuple[str, int], list] = {(n, c): [] for n in platforms for c in conns}
    cpu: dict[tuple[str, int], list] = {k: [] for k in results}  # worker CPU µs per request, per round
    try:
        keys = {}
        for name, p in platforms.items():
            p.setup()
            p.register("iris", artifact, config)
            keys[name] = p.create_key()
            p.start()
        headers = {name: {"Authorization": f"Api-Key {keys[name]}"} for name in platforms}
        url = {name: f"{p.url}/api/v1/models/iris/predict" for name, p in platforms.items()}
        for name in platforms:  # warm up: load the model, first batches
            run_wrk(url[name], body, headers[name], connections=4, seconds=2)
        order = list(platforms)
        for i in range(args.rounds):
            for c in conns:
                # A B, then B A: a drift in the machine's load favours neither.
                for name in order if i % 2 == 0 else order[::-1]:
                    before = cpu_seconds(platforms[name])
                    r = run_wrk(url[name], body, headers[name], connections=c, seconds=args.seconds)
                    cpu[name, c].append(1e6 * (cpu_seconds(platforms[name]) - before) / max(1, r.requests))
                    results[name, c].append(r)
                    print(f"c={c:<3d} {name:16s} {r.rps:8.1f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
                          f"CPU {cpu[name, c][-1]:6.1f} µs/req  non-2xx {r.non_2xx} {r.errors}", flush=True)
        checks = ""
        if "on" in platforms:
            time.sleep(3)  # one more flush interval for the last records
            on = platforms["on"]
            metrics = on.metrics()
            written = metrics.get(("inference_request_records_written_total", ()), 0.0)
            dropped = metrics.get(("inference_request_records_dropped_total", ()), 0.0)
            served = sum(r.requests for (n, _), rs in results.items() if n == "on" for r in rs)
            with sqlite3.connect(on.data_dir / "db.sqlite3") as db:
                rows = db.execute("SELECT count(*) FROM inference_requestrecord").fetchone()[0]
            log = on.log_path.read_text()
            access_lines = sum(1 for line in log.splitlines() if '"logger":"inference.access"' in line)
            checks = (f"monitored instance: {rows} request records in its database ({written:.0f} written, "
                      f"{dropped:.0f} dropped) and {access_lines} access log lines, for {served} requests in the "
                      f"measured rounds plus the warm-up")
    finally:
        for p in platforms.values():
            p.cleanup()

    med = {k: statistics.median(r.rps for r in rs) for k, rs in results.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    print()
    print("| conc. | monitoring | req/s (median) | p50 ms | p99 ms | web worker CPU µs/request | rounds (req/s) |")
    print("|---|---|---|---|---|---|---|")
    for (name, c), rs in results.items():
        rounds = ", ".join(f"{r.rps:.0f}" for r in rs)
        print(f"| {c} | {name} | {med[name, c]:.1f} | {statistics.median(r.p50_ms for r in rs):.2f} | "
              f"{statistics.median(r.p99_ms for r in rs):.2f} | {cpu_med[name, c]:.0f} | {rounds} |")
    print()
    for (name, c) in results:
        if name != "off" and ("off", c) in results:
            ratio = med[name, c] / med["off", c]
            # Each round's pair ran back to back: the median of their ratios is the steadiest figure.
            paired = statistics.median(a.rps / b.rps for a, b in zip(results[name, c], results["off", c]))
            extra = cpu_med[name, c] - cpu_med["off", c]
            print(f"c={c}: throughput {name} / off: {ratio:.3f} (medians), {paired:.3f} (median of paired rounds) "
                  f"-> cost {100 * (1 - paired):.1f} %; CPU per request {extra:+.1f} µs "
                  f"({100 * extra / cpu_med['off', c]:+.1f} %)")
    if checks:
        print(checks)


if __name__ == "__main__":
    main()
