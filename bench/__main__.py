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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import MLP_ARGS, ROOT, format_codes, mlp_config, run_wrk, write_mlp_safetensors
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
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--servers", default="platform,single-lock,torchserve,mlserver",
                    help="comma list; platform-wsgi adds the platform under gunicorn (its WSGI deployment)")
    ap.add_argument("--scenarios", default="", help="comma list like mlp:32:1 (default: all)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--platform-venv", choices=("runtime", "dev"), default="runtime",
                    help="runtime: the platform runs from bench/.envs/platform (requirements.txt only, as "
                         "deployed); dev: from this interpreter's venv (with the test tools)")
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")
    sys.path.insert(0, str(ROOT))

    workdir = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    mlp_path = write_mlp_safetensors(workdir / "mlp.safetensors")
    artifacts = {"mlp": (mlp_path, mlp_config(32, 5.0, 1024)), "iris": iris_artifacts(workdir)}
    wanted = args.servers.split(",")
    scenarios = SCENARIOS
    if args.scenarios:
        scenarios = [(m, int(c), int(n)) for m, c, n in (s.split(":") for s in args.scenarios.split(","))]

    servers: dict[str, object] = {}
    results: dict[tuple, dict[str, list]] = {}
    batch_sizes: dict[tuple, float] = {}
    notes: list[str] = []
    platform_python = sys.executable
    try:
        print("load generator capacity...", flush=True)
        capacity = wrk_capacity(min(args.seconds, 5))
        print(f"  wrk against a trivial responder: {capacity:.0f} req/s", flush=True)
        raw = raw_model()
        print(f"  raw MLP forward, 1 thread: {raw['batch1']:.0f}/s at batch 1, {raw['batch32']:.0f}/s at batch 32")
        if args.platform_venv == "runtime" and {"platform", "platform-wsgi"} & set(wanted):
            try:
                platform_python = runtime_python()
                notes.append("The platform ran from bench/.envs/platform: requirements.txt alone, as deployed.")
            except Exception as exc:  # noqa: BLE001 - measure it from this venv instead, and say so
                notes.append(f"bench/.envs/platform could not be created ({str(exc)[-200:]}); the platform ran "
                             "from the development venv: its web RSS is not comparable (docs/benchmarks.md).")
        factories = {
            "platform": lambda: [("platform", PlatformServer(platform_python))],
            "single-lock": lambda: [(f"single-lock:{m}", SingleLockServer(m)) for m in artifacts],
            "torchserve": lambda: [("torchserve", TorchServeServer())],
            "mlserver": lambda: [("mlserver", MLServerServer())],
            "platform-wsgi": lambda: [("platform-wsgi", PlatformWSGIServer(platform_python))],
        }
        for name in wanted:
            for key, s in factories[name]():
                started = time.time()
                try:
                    s.start(artifacts)
                    servers[key] = s
                    print(f"started {key} in {time.time() - started:.0f} s", flush=True)
                except Exception as exc:  # noqa: BLE001 - report, measure the others
                    s.stop()
                    notes.append(f"{key} could not be started: {str(exc)[-300:]}")
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
            results[key] = {}
            rows = rows_for(model, n)
            for _, s in targets_for(model):  # warm-up: 16 connections reach every web process of the platform
                run_wrk(s.url(model), s.body(model, rows), s.headers(), connections=16, seconds=2)
            plat = servers.get("platform")
            before = plat.platform.batch_counts(model) if plat else (0, 0)
            for _ in range(args.rounds):
                for name, s in targets_for(model):
                    r = run_wrk(s.url(model), s.body(model, rows), s.headers(), connections=conns,
                                seconds=args.seconds, threads=2 if conns > 32 else 1)
                    results[key].setdefault(name, []).append(r)
                    print(f"{model:5s} c={conns:<3d} n={n:<2d} {name:12s} {r.rps:8.1f} req/s  p50 {r.p50_ms:8.2f} ms"
                          f"  p99 {r.p99_ms:8.2f} ms  non-2xx {r.codes()} {r.errors}", flush=True)
            if plat:
                after = plat.platform.batch_counts(model)
                batch_sizes[key] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
        rss = {name: s.rss() for name, s in servers.items()}
        if "platform" in servers:  # the target is per web process (each holds its own models)
            rss[PER_PROCESS] = max(servers["platform"].platform.worker_rss(), default=0)
    finally:
        for s in servers.values():
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                pass

    report = render(args, results, batch_sizes, rss, raw, capacity, notes, artifacts,
                    torch_baseline_rss(platform_python))
    print(report)
    if not args.no_write:
        write_report(Path(args.out), report)
        plot(results, Path(args.out).with_name("benchmarks.png"))


def codes_of(rs: list) -> dict[int, int]:
    """The non-2xx responses of several runs, by status code."""
    total: dict[int, int] = {}
    for r in rs:
        for code, n in r.by_code.items():
            total[code] = total.get(code, 0) + n
    return total


def med(rs: list, attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in rs)


def render(args, results, batch_sizes, rss, raw, capacity, notes, artifacts, baseline_rss) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit `{commit}`, "
        f"{stdlib_platform.machine()} with {os.cpu_count()} cores, Python {stdlib_platform.python_version()}. "
        f"{args.seconds} s per measurement, {args.rounds} alternating rounds, medians. wrk drives "
        f"{capacity:.0f} req/s against a trivial responder on this machine (the load generator's ceiling).",
        "",
        f"Raw MLP (512-4096-4096-10, 1 thread, in-process, no HTTP): {raw['batch1']:.0f} instances/s at batch 1, "
        f"{raw['batch32']:.0f} instances/s at batch 32.",
        "",
        "| model | conc. | inst./req | server | req/s | × single-lock | p50 ms | p99 ms | non-2xx (by code) | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, conns, n), per in results.items():
        base = med(per["single-lock"], "rps") if "single-lock" in per else None
        for name, rs in per.items():
            rps = med(rs, "rps")
            ratio = f"{rps / base:.2f}" if base else "–"
            mb = f"{batch_sizes.get((model, conns, n), 0):.1f}" if name == "platform" else ""
            lines.append(f"| {model} | {conns} | {n} | {name} | {rps:.1f} | {ratio} | {med(rs, 'p50_ms'):.2f} | "
                         f"{med(rs, 'p99_ms'):.2f} | {format_codes(codes_of(rs)) or sum(r.non_2xx for r in rs)} | {mb} |")
    lines += ["", "RSS after the run: " + ", ".join(f"{'platform (all web processes)' if k == 'platform' else k} {v / 2**20:.0f} MiB" for k, v in rss.items()) + "."]
    lines += ["", "Targets:", ""]
    lines += [f"- {t}" for t in targets(results, rss, artifacts, baseline_rss)]
    if notes:
        lines += ["", "Notes: " + " ".join(notes)]
    return "\n".join(lines)


def targets(results, rss, artifacts, baseline_rss: int) -> list[str]:
    out = []

    def get(model, c, n, server):
        return results.get((model, c, n), {}).get(server)

    p, s = get("mlp", 32, 1, "platform"), get("mlp", 32, 1, "single-lock")
    if p and s:
        ratio = med(p, "rps") / med(s, "rps")
        out.append(f"{'PASS' if ratio >= 3 else 'FAIL'}: MLP c=32: platform {ratio:.2f}x the single-lock server (>= 3x)")
        for peer in ("mlserver", "torchserve"):
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
            codes = codes_of(p)
            other = {c: n for c, n in codes.items() if c != 503}  # overload must be a 503, nothing else
            bare = sum(r.no_retry_after for r in p)
            timeouts = any("timeout" in r.errors and not r.errors.endswith("timeout 0") for r in p)
            ok = frac >= 0.9 and not timeouts and not other and not bare
            out.append(f"{'PASS' if ok else 'FAIL'}: {model} c=256: {frac:.0%} of peak throughput, "
                       f"{codes.get(503, 0)} 503 (backpressure), {bare} of them without Retry-After, "
                       f"other non-2xx {format_codes(other) or 0}, "
                       f"{'timeouts!' if timeouts else 'no timeouts'}")
    if PER_PROCESS in rss:
        weights = sum(p.stat().st_size for p, _ in artifacts.values())
        limit = baseline_rss + weights + 120 * 2**20
        out.append(f"{'PASS' if rss[PER_PROCESS] <= limit else 'FAIL'}: web RSS {rss[PER_PROCESS] / 2**20:.0f} MiB "
                   "(largest web process) <= "
                   f"import torch + weights + 120 MiB = {limit / 2**20:.0f} MiB")
    return out


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
