"""`make bench`: the platform against a single-lock server, TorchServe, MLServer and the raw model.

All servers run at once on loopback (idle ones cost nothing), and each scenario's rounds
alternate between them (A B C D, A B C D, ...), so a slow minute on this shared machine
hits every server alike; the report gives medians and ratios to the single-lock server of
the same run. Results go to docs/benchmarks.md (between the BENCH markers) with a plot.

    python -m bench [--seconds 8] [--rounds 2] [--servers platform,single-lock,torchserve,mlserver]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform as stdlib_platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import MLP_ARGS, ROOT, WrkResult, cpu_model, format_codes, mlp_config, run_wrk, write_mlp_safetensors
from .references import (
    MLServerServer,
    PlatformServer,
    PlatformWSGIServer,
    SingleLockServer,
    TorchServeServer,
    runtime_python,
)

MARK_BEGIN = "<!-- BENCH:BEGIN -->"
PER_PROCESS = "platform, largest web process"
MARK_END = "<!-- BENCH:END -->"

# The overload check: the platform alone, its MLP given a queue of one batch per web process, so
# that 256 connections overflow it; the rejected requests must be fast 503s with Retry-After.
OVERLOAD_QUEUE = 32
OVERLOAD_CONNECTIONS = 256

SCENARIOS = [
    # (model, connections, instances per request)
    ("mlp", 1, 1), ("mlp", 32, 1), ("mlp", 256, 1), ("mlp", 32, 32),
    ("iris", 1, 1), ("iris", 16, 1), ("iris", 256, 1), ("iris", 32, 32),
]


def iris_artifacts(workdir: Path) -> tuple[Path, dict]:
    from inference.demo import train_iris

    demo = train_iris()
    path = workdir / "iris.safetensors"
    path.write_bytes(demo.safetensors_bytes())
    config = dict(demo.config)
    config["batching"] = {"max_batch_size": 32, "max_batch_delay_ms": 2, "max_queue_size": 1024}
    return path, config


def rows_for(model: str, n: int) -> list:
    import numpy as np

    width = 512 if model == "mlp" else 4
    rng = np.random.default_rng(n)
    base = rng.standard_normal((n, width)) if model == "mlp" else rng.uniform(0.5, 7.0, (n, width))
    return base.round(4).tolist()


def raw_model(seconds: float = 3.0) -> dict[str, float]:
    """In-process forward passes of the MLP, 1 thread: the ceiling, in instances/s."""
    code = f"""
import time, torch
from registry.architectures import MLP
torch.set_num_threads(1)
torch.manual_seed(0)
m = MLP(**{MLP_ARGS!r}).eval()
out = {{}}
for b in (1, 32):
    x = torch.randn(b, 512)
    with torch.inference_mode():
        for _ in range(3): m(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < {seconds}:
            m(x); n += b
    out[b] = n / (time.perf_counter() - t0)
print(out[1], out[32])
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    b1, b32 = map(float, res.stdout.split())
    return {"batch1": b1, "batch32": b32}


def torch_baseline_rss(python: str = sys.executable) -> int:
    """RSS of `import torch` with the platform's own interpreter and files: the shared libraries'
    resident pages depend on how their files sit in the page cache (the same libtorch_cpu.so was
    seen at 95 MiB in one venv and 48 MiB in another on one machine), so the baseline must come
    from the files the platform maps."""
    code = "import torch, os; print(open(f'/proc/{os.getpid()}/status').read())"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Run:
    """What one `make bench` measured: the report and the targets are read from it."""

    args: argparse.Namespace
    artifacts: dict[str, tuple[Path, dict]]
    results: dict[tuple, dict[str, list[WrkResult]]] = field(default_factory=dict)
    batch_sizes: dict[tuple, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    raw: dict[str, float] = field(default_factory=dict)
    capacity: float = 0.0
    notes: list[str] = field(default_factory=list)
    baseline_rss: int = 0
    overload: list[WrkResult] = field(default_factory=list)
    # the overload check's requests as the platform recorded them: status -> (count, p50 ms, p99 ms)
    overload_server: dict[int, tuple[int, float, float]] = field(default_factory=dict)
    # the heavy-input check (bench.heavy_input): "refused" with the default budgets, "accepted" with a per-request
    # pixel budget that lets the requests through, to be decoded off the event loop
    heavy: dict[str, object] = field(default_factory=dict)
    # bench.runtimes: the MLP on the PyTorch runtime and exported to ONNX (ONNX Runtime), one platform
    runtimes: object = None
    # bench.large_input: requests of many images (decoding and pre-processing on the board)
    large_input: object = None


def overload(python: str, artifacts: dict, seconds: int, rounds: int) -> tuple[list[WrkResult], dict]:
    """The MLP at 256 connections on a platform whose queue holds one batch per web process:
    every response timed by status code (200 served, 503 shed) by wrk, and as the platform
    recorded it (its request records: from the request parsed to the response ready)."""
    path, _ = artifacts["mlp"]
    server = PlatformServer(python)
    try:
        server.start({"mlp": (path, mlp_config(32, 5.0, OVERLOAD_QUEUE))})
        body = server.body("mlp", rows_for("mlp", 1))
        # Warm-up at full concurrency: the first batches of each size build their kernels.
        run_wrk(server.url("mlp"), body, server.headers(), connections=OVERLOAD_CONNECTIONS, seconds=3, threads=2)
        time.sleep(2)  # the warm-up's records written
        first_id = recorded_max_id(server)
        out = []
        for _ in range(rounds):
            r = run_wrk(server.url("mlp"), body, server.headers(), connections=OVERLOAD_CONNECTIONS,
                        seconds=seconds, latency_by_code=True)
            print(f"overload c={OVERLOAD_CONNECTIONS} queue {OVERLOAD_QUEUE}: {r.rps:.1f} req/s  "
                  f"{r.latency_by_code}  non-2xx {r.codes()}  {r.errors}", flush=True)
            out.append(r)
        time.sleep(3)  # the flusher writes the last records
        return out, recorded_latency(server, first_id)
    finally:
        server.stop()


def _records(server: PlatformServer, sql: str, params: tuple = ()) -> list:
    import sqlite3

    with sqlite3.connect(server.platform.data_dir / "db.sqlite3") as db:
        return db.execute(sql, params).fetchall()


def recorded_max_id(server: PlatformServer) -> int:
    return _records(server, "SELECT COALESCE(MAX(id), 0) FROM inference_requestrecord")[0][0]


def recorded_latency(server: PlatformServer, after_id: int) -> dict[int, tuple[int, float, float]]:
    """status -> (requests, p50 ms, p99 ms) of the request records after `after_id`."""
    by_status: dict[int, list[float]] = {}
    for status, ms in _records(server, "SELECT status, latency_ms FROM inference_requestrecord WHERE id > ?",
                               (after_id,)):
        by_status.setdefault(status, []).append(ms)
    out = {}
    for status, values in sorted(by_status.items()):
        values.sort()
        out[status] = (len(values), values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))])
    return out


def wrk_capacity(seconds: int) -> float:
    """Requests/s wrk reaches against a trivial asyncio responder (the load generator's ceiling)."""
    from .common import free_port, wait_http

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.servers.echo", str(port)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_http(f"http://127.0.0.1:{port}/", 20)
        return run_wrk(f"http://127.0.0.1:{port}/", "{}", {}, connections=32, seconds=seconds).rps
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="platform,single-lock,torchserve,torchserve-default,mlserver",
                    help="comma list; platform-wsgi adds the platform under gunicorn (its WSGI deployment)")
    ap.add_argument("--scenarios", default="", help="comma list like mlp:32:1 (default: all)")
    ap.add_argument("--no-overload", action="store_true", help="skip the overload check (a platform with a short queue)")
    ap.add_argument("--no-heavy", action="store_true",
                    help="skip the heavy-input check (/healthz while clients send 200 4096x4096 images per request)")
    ap.add_argument("--no-runtimes", action="store_true",
                    help="skip the runtimes check (the MLP on the PyTorch runtime vs exported to ONNX, c=1 and c=32)")
    ap.add_argument("--no-large-input", action="store_true",
                    help="skip the large-input rows (the digits demo with 64 images per request)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--baseline", default="", metavar="DIR",
                    help="a checkout of another commit (git worktree add DIR <commit>): its platform runs beside "
                         "this one as the server 'baseline' (add it to --servers), from the same venv")
    ap.add_argument("--platform-venv", choices=("runtime", "dev"), default="runtime",
                    help="runtime: the platform runs from bench/.envs/platform (requirements.txt only, as "
                         "deployed); dev: from this interpreter's venv (with the test tools)")
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")
    sys.path.insert(0, str(ROOT))

    workdir = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    mlp_path = write_mlp_safetensors(workdir / "mlp.safetensors")
    run = Run(args, {"mlp": (mlp_path, mlp_config(32, 5.0, 1024)), "iris": iris_artifacts(workdir)})
    wanted = args.servers.split(",")
    scenarios = SCENARIOS
    if args.scenarios:
        scenarios = [(m, int(c), int(n)) for m, c, n in (s.split(":") for s in args.scenarios.split(","))]

    servers: dict[str, object] = {}
    platform_python = sys.executable
    try:
        print("load generator capacity...", flush=True)
        run.capacity = wrk_capacity(min(args.seconds, 5))
        print(f"  wrk against a trivial responder: {run.capacity:.0f} req/s", flush=True)
        run.raw = raw_model()
        print(f"  raw MLP forward, 1 thread: {run.raw['batch1']:.0f}/s at batch 1, {run.raw['batch32']:.0f}/s at batch 32")
        if args.platform_venv == "runtime" and {"platform", "platform-wsgi", "baseline"} & set(wanted):
            try:
                platform_python = runtime_python()
                run.notes.append("The platform ran from bench/.envs/platform: requirements.txt alone, as deployed.")
            except Exception as exc:  # noqa: BLE001 - measure it from this venv instead, and say so
                run.notes.append(f"bench/.envs/platform could not be created ({str(exc)[-200:]}); the platform ran "
                                 "from the development venv: its web RSS is not comparable (docs/benchmarks.md).")
        factories = {
            "platform": lambda: [("platform", PlatformServer(platform_python))],
            "single-lock": lambda: [(f"single-lock:{m}", SingleLockServer(m)) for m in run.artifacts],
            "torchserve": lambda: [("torchserve", TorchServeServer())],
            "torchserve-default": lambda: [("torchserve-default", TorchServeServer(os.cpu_count() or 1,
                                                                                   "torchserve-default"))],
            "mlserver": lambda: [("mlserver", MLServerServer())],
            "platform-wsgi": lambda: [("platform-wsgi", PlatformWSGIServer(platform_python))],
            "baseline": lambda: [("baseline", PlatformServer(platform_python, Path(args.baseline).resolve(),
                                                             "baseline"))],
        }
        for name in wanted:
            for key, s in factories[name]():
                started = time.time()
                try:
                    s.start(run.artifacts)
                    servers[key] = s
                    print(f"started {key} in {time.time() - started:.0f} s", flush=True)
                except Exception as exc:  # noqa: BLE001 - report, measure the others
                    s.stop()
                    run.notes.append(f"{key} could not be started: {str(exc)[-300:]}")
                    print(f"!! {key} failed to start: {exc}", flush=True)

        def targets_for(model: str) -> list[tuple[str, object]]:
            out = []
            for key, s in servers.items():
                if key.startswith("single-lock:") and not key.endswith(":" + model):
                    continue
                out.append(("single-lock" if key.startswith("single-lock") else key, s))
            return out

        for model, conns, n in scenarios:
            key = (model, conns, n)
            run.results[key] = {}
            rows = rows_for(model, n)
            for _, s in targets_for(model):  # warm-up: 16 connections reach every web process of the platform
                run_wrk(s.url(model), s.body(model, rows), s.headers(), connections=16, seconds=2)
            plat = servers.get("platform")
            before = plat.platform.batch_counts(model) if plat else (0, 0)
            for _ in range(args.rounds):
                for name, s in targets_for(model):
                    r = run_wrk(s.url(model), s.body(model, rows), s.headers(), connections=conns,
                                seconds=args.seconds, threads=2 if conns > 32 else 1)
                    run.results[key].setdefault(name, []).append(r)
                    print(f"{model:5s} c={conns:<3d} n={n:<2d} {name:12s} {r.rps:8.1f} req/s  p50 {r.p50_ms:8.2f} ms"
                          f"  p99 {r.p99_ms:8.2f} ms  non-2xx {r.codes()} {r.errors}", flush=True)
            if plat:
                after = plat.platform.batch_counts(model)
                run.batch_sizes[key] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
        run.rss = {name: s.rss() for name, s in servers.items()}
        if "platform" in servers:  # the target is per web process (each holds its own models)
            run.rss[PER_PROCESS] = max(servers["platform"].platform.worker_rss(), default=0)
    finally:
        for s in servers.values():
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                pass
    if "platform" in wanted and not args.no_overload:  # alone on the machine, after the others stopped
        try:
            run.overload, run.overload_server = overload(platform_python, run.artifacts, args.seconds, args.rounds)
        except Exception as exc:  # noqa: BLE001 - report the rest
            run.notes.append(f"the overload check could not run: {str(exc)[-300:]}")
    if "platform" in wanted and not args.no_heavy:  # alone too: its clients load the whole machine
        from . import heavy_input

        for case, pixels in (("refused", None), ("accepted", heavy_input.ACCEPTED_PIXELS)):
            try:
                run.heavy[case] = heavy_input.run(seconds=max(15, 2 * args.seconds), request_pixels=pixels,
                                                  python=platform_python)
                print(f"heavy input ({case}): {run.heavy[case].line()}", flush=True)
            except Exception as exc:  # noqa: BLE001 - report the rest
                run.notes.append(f"the heavy-input check ({case}) could not run: {str(exc)[-300:]}")

    if "platform" in wanted and not args.no_runtimes:  # alone, so the two runtimes share the machine alike
        from . import runtimes

        try:
            run.runtimes = runtimes.run(python=platform_python, seconds=args.seconds, rounds=args.rounds)
        except Exception as exc:  # noqa: BLE001 - report the rest
            run.notes.append(f"the runtimes check could not run: {str(exc)[-300:]}")

    if "platform" in wanted and not args.no_large_input:
        from . import large_input

        try:
            run.large_input = large_input.run(python=platform_python, seconds=args.seconds, rounds=args.rounds)
        except Exception as exc:  # noqa: BLE001 - report the rest
            run.notes.append(f"the large-input rows could not run: {str(exc)[-300:]}")

    run.baseline_rss = torch_baseline_rss(platform_python)
    report = render(run)
    print(report)
    if not args.no_write:
        write_report(Path(args.out), report)
        plot(run.results, Path(args.out).with_name("benchmarks.png"))


def machine_line() -> str:
    """The CPU model, cores, kernel and Python of this run: the same harness gave different figures on
    AMD EPYC and Intel Xeon machines of the same size, so every report names its machine."""
    return (f"{cpu_model()} ({stdlib_platform.machine()}, {os.cpu_count()} cores), Linux {stdlib_platform.release()}, "
            f"Python {stdlib_platform.python_version()}")


def codes_of(rs: list) -> dict[int, int]:
    """The non-2xx responses of several runs, by status code."""
    total: dict[int, int] = {}
    for r in rs:
        for code, n in r.by_code.items():
            total[code] = total.get(code, 0) + n
    return total


def med(rs: list, attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in rs)


def render(run: Run) -> str:
    args = run.args
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit `{commit}`, {machine_line()}; the platform from "
        f"the {args.platform_venv} venv. "
        f"{args.seconds} s per measurement, {args.rounds} alternating rounds, medians. wrk drives "
        f"{run.capacity:.0f} req/s against a trivial responder on this machine (the load generator's ceiling).",
        "",
        f"Raw MLP (512-4096-4096-10, 1 thread, in-process, no HTTP): {run.raw['batch1']:.0f} instances/s at "
        f"batch 1, {run.raw['batch32']:.0f} instances/s at batch 32.",
        "",
        "| model | conc. | inst./req | server | req/s | × single-lock | p50 ms | p99 ms | non-2xx (by code) | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, conns, n), per in run.results.items():
        base = med(per["single-lock"], "rps") if "single-lock" in per else None
        for name, rs in per.items():
            rps = med(rs, "rps")
            ratio = f"{rps / base:.2f}" if base else "–"
            mb = f"{run.batch_sizes.get((model, conns, n), 0):.1f}" if name == "platform" else ""
            lines.append(f"| {model} | {conns} | {n} | {name} | {rps:.1f} | {ratio} | {med(rs, 'p50_ms'):.2f} | "
                         f"{med(rs, 'p99_ms'):.2f} | {format_codes(codes_of(rs)) or sum(r.non_2xx for r in rs)} | {mb} |")
    lines += ["", "RSS after the run: " + ", ".join(
        f"{'platform (all web processes)' if k == 'platform' else k} {v / 2**20:.0f} MiB" for k, v in run.rss.items()) + "."]
    if run.overload:
        lines += ["", overload_line(run.overload, run.overload_server)]
    if run.heavy:
        lines += ["", "Heavy input (bench.heavy_input; the platform alone, the digits demo): 4 client processes each "
                  "send requests of 200 base64 PNGs of 4096x4096 pixels in a loop while a probe asks /healthz every "
                  "20 ms; with the default budgets, and with a per-request pixel budget that accepts them."]
    if run.runtimes is not None:
        lines += ["", "Runtimes (bench.runtimes; the platform alone): the MLP from safetensors (PyTorch runtime) and "
                  "exported with torch.onnx.export (ONNX Runtime), same weights, same batching and 1 thread per "
                  "batcher, alternating rounds.", "", *run.runtimes.report()]
    if run.large_input is not None:
        lines += ["", "Large inputs (bench.large_input; the platform alone): "
                  + "\n".join(run.large_input.report())]
    lines += ["", "Targets:", ""]
    lines += [f"- {t}" for t in targets(run)]
    if run.notes:
        lines += ["", "Notes: " + " ".join(run.notes)]
    return "\n".join(lines)


def overload_stats(rs: list[WrkResult]) -> dict:
    """Medians over the overload rounds: responses/s by status, and p50/p99 by status."""
    out = {}
    for code in sorted({c for r in rs for c in r.latency_by_code}):
        per = [(r.latency_by_code[code], r) for r in rs if code in r.latency_by_code]
        out[code] = {
            "rps": statistics.median(lat[0] / max(1e-9, r.requests / r.rps) for lat, r in per),
            "p50": statistics.median(lat[1] for lat, _ in per),
            "p99": statistics.median(lat[2] for lat, _ in per),
        }
    return out


def overload_line(rs: list[WrkResult], server_side: dict[int, tuple[int, float, float]]) -> str:
    parts = [f"{code}: {s['rps']:.0f}/s, p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms"
             for code, s in overload_stats(rs).items()]
    inside = [f"{code}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({n} records)" for code, (n, p50, p99) in server_side.items()]
    return (f"Overload (the platform alone, its MLP with max_queue_size {OVERLOAD_QUEUE} per web process, "
            f"{OVERLOAD_CONNECTIONS} connections; wrk times every response by status, with a thread per "
            "connection, which costs the servers some of the CPU): " + "; ".join(parts) + ". "
            "Inside the platform over the same rounds (its request records, from the request parsed to the "
            "response ready): " + ("; ".join(inside) or "none recorded") + ".")


def targets(run: Run) -> list[str]:
    out = []
    results = run.results

    def get(model, c, n, server):
        return results.get((model, c, n), {}).get(server)

    p, s = get("mlp", 32, 1, "platform"), get("mlp", 32, 1, "single-lock")
    if p and s:
        ratio = med(p, "rps") / med(s, "rps")
        out.append(f"{'PASS' if ratio >= 3 else 'FAIL'}: MLP c=32: platform {ratio:.2f}x the single-lock server (>= 3x)")
        for peer in ("mlserver", "torchserve", "torchserve-default"):
            q = get("mlp", 32, 1, peer)
            if q:
                r2 = med(p, "rps") / med(q, "rps")
                verdict = ("PASS" if r2 > 1 else "FAIL") if peer == "mlserver" else ("ahead" if r2 > 1 else "behind")
                out.append(f"{verdict}: MLP c=32: platform {r2:.2f}x {peer}")
        ok = med(p, "p99_ms") < med(s, "p50_ms")
        out.append(f"{'PASS' if ok else 'FAIL'}: MLP c=32: platform p99 {med(p, 'p99_ms'):.1f} ms < single-lock p50 "
                   f"{med(s, 'p50_ms'):.1f} ms")
    p, s = get("iris", 16, 1, "platform"), get("iris", 16, 1, "single-lock")
    if p and s:
        ratio = med(p, "rps") / med(s, "rps")
        out.append(f"{'PASS' if ratio >= 1 else 'FAIL'}: iris c=16: platform {ratio:.2f}x the single-lock server (>= 1.0x)")
    for model in ("mlp", "iris"):
        p, s = get(model, 1, 1, "platform"), get(model, 1, 1, "single-lock")
        if p and s:
            d = med(p, "p50_ms") - med(s, "p50_ms")
            out.append(f"{'PASS' if d <= 1 else 'FAIL'}: {model} c=1: platform p50 {d:+.2f} ms vs single-lock (within 1 ms)")
    for model in ("mlp", "iris"):
        peak = max((med(v["platform"], "rps") for (m, c, n), v in results.items()
                    if m == model and n == 1 and "platform" in v), default=0)
        p = get(model, 256, 1, "platform")
        if p and peak:
            frac = med(p, "rps") / peak
            shed = Shedding.of(p)
            ok = frac >= 0.9 and shed.clean
            out.append(f"{'PASS' if ok else 'FAIL'}: {model} c=256: {frac:.0%} of peak throughput, "
                       f"{shed.codes.get(503, 0)} 503 (backpressure), {shed.bare} of them without Retry-After, "
                       f"other non-2xx {format_codes(shed.other) or 0}, "
                       f"{'timeouts!' if shed.timeouts else 'no timeouts'}")
    if run.overload:
        out.append(overload_target(run.overload))
    for case, outcome in run.heavy.items():
        verdict = "PASS" if outcome.passed else "FAIL"
        what = ("refused by the per-request pixel budget" if case == "refused" else
                "accepted (INFERENCE_MAX_REQUEST_PIXELS raised) and decoded off the event loop")
        out.append(f"{verdict}: heavy input, {what}: {outcome.line()} (p99 < 50 ms)")
    if PER_PROCESS in run.rss:
        weights = sum(p.stat().st_size for p, _ in run.artifacts.values())
        limit = run.baseline_rss + weights + 120 * 2**20
        out.append(f"{'PASS' if run.rss[PER_PROCESS] <= limit else 'FAIL'}: web RSS {run.rss[PER_PROCESS] / 2**20:.0f} MiB "
                   "(largest web process) <= "
                   f"import torch + weights + 120 MiB = {limit / 2**20:.0f} MiB")
    return out


def timed_out(r: WrkResult) -> bool:
    """wrk counted a request that got no answer within its timeout."""
    m = re.search(r"timeout (\d+)", r.errors)
    return bool(m and int(m.group(1)))


@dataclass
class Shedding:
    """How a server refused what it could not serve, over some runs: only 503s, each with
    Retry-After, and no request left without an answer."""

    codes: dict[int, int]  # non-2xx by status code
    other: dict[int, int]  # the non-2xx that are not 503
    bare: int  # 503s without Retry-After
    timeouts: bool

    @classmethod
    def of(cls, rs: list[WrkResult]) -> Shedding:
        codes = codes_of(rs)
        return cls(codes, {c: n for c, n in codes.items() if c != 503}, sum(r.no_retry_after for r in rs),
                   any(timed_out(r) for r in rs))

    @property
    def clean(self) -> bool:
        return not (self.other or self.bare or self.timeouts)


def overload_target(rs: list[WrkResult]) -> str:
    """Overload is a fast 503 with Retry-After, never a timeout: some requests were shed, every
    non-2xx is a 503 with Retry-After, no request timed out or lost its connection, a shed
    request's p50 is at most half a served one's (it waits for no batch), and 99 % of them are
    answered within the 1 s their Retry-After asks the client to wait."""
    stats = overload_stats(rs)
    refused = Shedding.of(rs)
    broken = [r.errors for r in rs if r.errors]  # connect/read/write errors: a connection cut or refused
    shed, served = stats.get(503), stats.get(200)
    fast = bool(shed and served and shed["p50"] <= served["p50"] / 2 and shed["p99"] < 1000)
    ok = fast and refused.clean and not broken
    return (f"{'PASS' if ok else 'FAIL'}: overload (MLP, queue {OVERLOAD_QUEUE}, c={OVERLOAD_CONNECTIONS}): "
            f"{refused.codes.get(503, 0)} 503, {refused.bare} without Retry-After, other non-2xx "
            f"{format_codes(refused.other) or 0}, {'timeouts!' if refused.timeouts else 'no timeouts'}, "
            f"{'; '.join(broken) or 'no socket errors'}; 503 p50 "
            f"{nan_or(shed, 'p50')} ms <= half the 200 p50 {nan_or(served, 'p50')} ms, 503 p99 "
            f"{nan_or(shed, 'p99')} ms < 1000 ms (Retry-After: 1)")


def nan_or(stats: dict | None, key: str) -> str:
    return f"{stats[key]:.2f}" if stats else "nan"


def write_report(path: Path, report: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{MARK_BEGIN}\n{report}\n\n![throughput vs concurrency](benchmarks.png)\n{MARK_END}"
    if MARK_BEGIN in text:
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1] if MARK_END in rest else ""
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Side by side (`make bench`)\n\n" + block + "\n"
    path.write_text(text)


def plot(results, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, model in zip(axes, ("mlp", "iris")):
        servers = sorted({s for (m, c, n), per in results.items() if m == model for s in per})
        for server in servers:
            pts = sorted((c, med(per[server], "rps")) for (m, c, n), per in results.items()
                         if m == model and n == 1 and server in per)
            if pts:
                ax.plot([c for c, _ in pts], [r for _, r in pts], marker="o", label=server)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent connections (1 instance per request)")
        ax.set_ylabel("requests/s")
        ax.set_title(model)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
