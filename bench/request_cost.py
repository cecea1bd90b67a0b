"""CPU per request of the platform's request path, with the iris demo model (issue 25, item 3).

    python -m bench.request_cost [--seconds 15] [--connections 256,1] [--rounds 3]
                                 [--baseline DIR] [--single-lock] [--profile DIR]

Starts the platform as `make run` does (``bench.common.Platform``: granian, its default web
processes, SQLite and the local-memory cache, auth, rate limits, validation, request records,
metrics and the access log on) with the iris demo model, drives it with wrk for a fixed time and
reads the CPU time (utime + stime, every thread) of the server's processes from /proc before and
after: CPU microseconds per request. That figure holds on a busy machine, where req/s does not:
time another process takes from the platform is not counted in its CPU time.

--baseline DIR runs another checkout's platform (the commit before a change, from the same venv)
beside this one; rounds alternate between them. --single-lock adds the single-lock Flask server
(bench.servers.single_lock, from this venv) for the c=1 latency; --lean the lean reference server
(bench.servers.lean: granian, orjson, numpy and a batcher thread, nothing else), the least a batching
Python server costs per request on the machine. Every row also splits the CPU by
thread, from /proc/PID/task: a Python thread by its Python name (``py-spy dump``; a granian process runs
its event loop on its MainThread), any other as native (granian's Rust runtime, torch's threads).

--profile DIR: after the rounds, each platform's web processes are sampled with py-spy (in
requirements-dev.txt; ``--gil``: the thread holding the GIL, so samples are Python CPU time) under
wrk at the first --connections for --profile-seconds: DIR/iris-c<N>-<name>.txt (collapsed stacks),
DIR/iris-c<N>-<name>.svg (a flame graph of them), and the share of the event loop's samples by
stage of the request path (``STAGES``) is printed.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .common import PY, ROOT, child_pids, cpu_model, free_port, run_wrk, wait_http

IRIS_BODY = '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
TICK = os.sysconf("SC_CLK_TCK")


# ---- CPU time from /proc -----------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(child_pids(p))
    return out


def _stat(path: str) -> tuple[str, float] | None:
    """(command name, utime + stime in seconds) of /proc/.../stat."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def cpu_by_tid(pid: int) -> dict[int, tuple[str, float]]:
    """Every thread of `pid`'s tree: its id -> (command name, CPU seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for p in tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            st = _stat(f"/proc/{p}/task/{tid}/stat")
            if st is not None:
                out[int(tid)] = st
    return out


_DUMP_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "([^"]*)"', re.MULTILINE)


def python_thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name of every Python thread in `pid`'s tree (``py-spy dump``; {} where
    it cannot run). Python does not give its threads' names to the OS: /proc calls them all "python"."""
    names: dict[int, str] = {}
    for p in tree(pid):
        try:
            dump = subprocess.run([str(Path(PY).parent / "py-spy"), "dump", "--pid", str(p)],
                                  capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        names.update(parse_thread_names(dump))
    return names


def parse_thread_names(dump: str) -> dict[int, str]:
    """The thread ids and names of one ``py-spy dump``."""
    return {int(m.group(1)): m.group(2) for m in _DUMP_THREAD.finditer(dump)}


def cpu_by_thread(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  names: dict[int, str]) -> dict[str, float]:
    """CPU seconds each thread used between two ``cpu_by_tid`` readings, added up by name (digits as N):
    a Python thread by its Python name (the event loop of a granian process runs on its MainThread), any
    other by its command name, marked native (granian's Rust runtime, torch's and OpenMP's threads)."""
    out: dict[str, float] = defaultdict(float)
    for tid, (comm, seconds) in after.items():
        name = names.get(tid)
        label = re.sub(r"\d+", "N", comm if name is None else name) + (" (native)" if name is None else "")
        out[label] += seconds - before.get(tid, (comm, 0.0))[1]
    return dict(out)


def cpu_total(pid: int) -> float:
    return sum(st[1] for p in tree(pid) if (st := _stat(f"/proc/{p}/stat")) is not None)


# ---- servers --------------------------------------------------------------------------------------

class ReferenceProcess:
    """A reference server started by this module as one process group (its ``proc``)."""

    proc: subprocess.Popen

    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


class SingleLock(ReferenceProcess):
    """The single-lock Flask server of `make bench` (bench.servers.single_lock), from this venv."""

    name = "single-lock"

    def __init__(self, artifact: Path, config: dict) -> None:
        self.port = free_port()
        env = dict(os.environ, ARTIFACT=str(artifact), ARCH_ARGS=json.dumps(config["architecture_args"]),
                   PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([str(Path(PY).parent / "gunicorn"), "-w", "1", "--threads", "32", "-k", "gthread",
                                      "-b", f"127.0.0.1:{self.port}", "bench.servers.single_lock:app"],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/healthz", 120)
        self.url, self.headers = f"http://127.0.0.1:{self.port}/predict", {}


class Lean(ReferenceProcess):
    """The lean reference server (bench.servers.lean) under granian, as many processes as the platform's."""

    name = "lean"

    def __init__(self, artifact: Path, config: dict, workers: int) -> None:
        self.port = free_port()
        normalize = next(s for s in config["preprocess"] if s["step"] == "normalize")
        labels = next((s.get("labels") for s in config.get("postprocess", []) if s.get("labels")), None)
        env = dict(os.environ, ARTIFACT=str(artifact), ARCH_ARGS=json.dumps(config["architecture_args"]),
                   MEAN=json.dumps(normalize["mean"]), STD=json.dumps(normalize["std"]), PYTHONPATH=str(ROOT),
                   OMP_NUM_THREADS="1", **({"LABELS": json.dumps(labels)} if labels else {}))
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([str(Path(PY).parent / "granian"), "--interface", "rsgi", "--loop", "uvloop",
                                      "--workers", str(workers), "--port", str(self.port), "--log-level", "warning",
                                      "bench.servers.lean:app"],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/healthz", 120)
        self.url, self.headers = f"http://127.0.0.1:{self.port}/predict", {"Authorization": "Api-Key lean.secret"}


class PlatformUnderTest:
    """A platform from checkout `root` with the iris demo model, started as `make run` does."""

    def __init__(self, name: str, root: Path, artifacts: dict, python: str) -> None:
        from .references import PlatformServer

        self.name = name
        self.server = PlatformServer(python, root, name)
        self.server.start(artifacts)
        self.url, self.headers = self.server.url("iris"), self.server.headers()

    def pid(self) -> int:
        return self.server.platform.proc.pid

    def workers(self) -> list[int]:
        return child_pids(self.pid())

    def stop(self) -> None:
        self.server.stop()


# ---- measuring ------------------------------------------------------------------------------------

@dataclass
class Row:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # CPU microseconds per request, every process and thread of the server
    threads: dict[str, float] = field(default_factory=dict)  # the same, by thread name
    failed: int = 0


def measure(server, connections: int, seconds: int) -> Row:
    before_total, before = cpu_total(server.pid()), cpu_by_tid(server.pid())
    r = run_wrk(server.url, IRIS_BODY, server.headers, connections=connections, seconds=seconds,
                threads=2 if connections > 1 else 1)
    after_total, after = cpu_total(server.pid()), cpu_by_tid(server.pid())
    n = max(1, r.requests)
    threads = {k: v * 1e6 / n for k, v in cpu_by_thread(before, after, python_thread_names(server.pid())).items()}
    return Row(r.rps, r.p50_ms, r.p99_ms, (after_total - before_total) * 1e6 / n,
               {k: v for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v >= 0.5},
               r.non_2xx + (1 if r.errors else 0))


def warm(server, seconds: int = 3) -> None:
    """Until every web process has loaded the model and served a while."""
    for c in (8, 64):
        run_wrk(server.url, IRIS_BODY, server.headers, connections=c, seconds=seconds, threads=2)


# ---- profiling ------------------------------------------------------------------------------------

# Stages of the request path. A sample is attributed by its innermost frame of the platform's own code
# (P): by the library function P called, when that is one of LIBRARY_STAGES (Django's URL resolver,
# prometheus_client, logging ...), else by P itself (PROJECT_STAGES: file fragment, function or "*").
# A preprocess or postprocess frame is split by its caller (ServedVersion.prepare / .finish).
PROJECT_STAGES: list[tuple[str, str, str]] = [
    ("inference/monitoring/metrics.py", "*", "metrics"),
    ("inference/monitoring/records.py", "*", "request records"),
    ("inference/monitoring/logs.py", "*", "access log"),
    ("inference/monitoring/observe.py", "*", "observe (metrics, log, record glue)"),
    ("inference/services/predict.py", "observed", "observe (metrics, log, record glue)"),
    ("inference/services/predict.py", "run_hooks", "observe (metrics, log, record glue)"),
    ("inference/ratelimit.py", "*", "rate limit"),
    ("inference/access.py", "count_request", "rate limit"),
    ("inference/access.py", "*", "auth (key lookup)"),
    ("inference/keys.py", "*", "auth (key lookup)"),
    ("inference/apis/parsing.py", "*", "JSON parse"),
    ("inference/tensors.py", "*", "validation, preprocess"),
    ("inference/pipeline/", "*", "validation, preprocess"),
    ("inference/runtime/batcher.py", "_run", "forward (batcher thread)"),
    ("inference/runtime/batcher.py", "_take", "forward (batcher thread)"),
    ("inference/runtime/batcher.py", "_compute", "forward (batcher thread)"),
    ("inference/runtime/batcher.py", "*", "batcher hand-off"),
    ("inference/runtime/", "*", "forward (batcher thread)"),
    ("inference/selectors.py", "*", "version selection"),
    ("inference/pool.py", "*", "version selection"),
    ("inference/routing.py", "*", "version selection"),
    ("registry/", "*", "version selection"),
    ("inference/offload.py", "*", "thread hand-off (offload)"),
    ("inference/middleware.py", "api_route", "URL resolve"),
    ("inference/middleware.py", "receive_body", "front (body)"),
    ("inference/middleware.py", "*", "middleware"),
    ("inference_platform/edge.py", "*", "front request and edge (ids, Host, headers)"),
    ("inference_platform/front.py", "*", "front (RSGI/ASGI: body, headers, response)"),
    ("inference_platform/protocols.py", "*", "front (RSGI/ASGI: body, headers, response)"),
    ("inference/errors.py", "*", "errors"),
    ("inference/apis/", "*", "v1 view (JSON render, glue)"),
    ("inference/services/predict.py", "*", "predict service glue"),
]
LIBRARY_STAGES: list[tuple[str, str, str]] = [
    ("prometheus_client/", "*", "metrics"),
    ("logging/", "*", "access log"),
    ("django_ratelimit/", "*", "rate limit"),
    ("django/urls/", "*", "URL resolve"),
    ("django/http/request.py", "HttpRequest.get_host", "host check (ALLOWED_HOSTS)"),
    ("django/core/handlers/asgi.py", "*", "Django request (ASGIRequest, headers)"),
    ("django/http/request.py", "*", "Django request (ASGIRequest, headers)"),
    ("django/http/response.py", "*", "Django response (HttpResponse)"),
    ("django/middleware/", "*", "middleware"),
    ("django/utils/deprecation.py", "*", "middleware"),
    ("django/utils/functional.py", "LazyObject.__getattribute__", "settings reads"),
    ("django/conf/", "*", "settings reads"),
    ("django/utils/functional.py", "cached_property.__get__", "Django request (ASGIRequest, headers)"),
]
ROOT_STAGES: list[tuple[str, str, str]] = [
    ("asyncio/", "*", "event loop (asyncio)"),
    ("selectors.py", "*", "event loop (asyncio)"),
    ("granian/", "*", "event loop (asyncio)"),
    ("threading.py", "*", "threads (wait, wake)"),
    ("concurrent/", "*", "threads (wait, wake)"),
    ("queue.py", "*", "threads (wait, wake)"),
]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    return (m.group("func"), m.group("file")) if m else (frame, "")


def _match(rules: list[tuple[str, str, str]], func: str, file: str) -> str | None:
    for fragment, fn, stage in rules:
        if fragment in file and (fn == "*" or fn == func):
            return stage
    return None


def _ours(file: str) -> bool:
    return file.startswith(("inference/", "registry/")) or (
        file.startswith("inference_platform/") and not file.endswith("serve.py"))


def stage_of(stack: list[str]) -> str:
    """The stage of one sample (its frames, outermost first, as py-spy's collapsed stacks write them)."""
    frames = [_parse(f) for f in stack]
    for i in range(len(frames) - 1, -1, -1):
        func, file = frames[i]
        if not _ours(file):
            continue
        if i + 1 < len(frames) and (stage := _match(LIBRARY_STAGES, *frames[i + 1])):
            return stage
        stage = _match(PROJECT_STAGES, func, file) or "other"
        if stage == "validation, preprocess" and any(f == "ServedVersion.finish" for f, _ in frames):
            return "postprocess"
        return stage
    for func, file in reversed(frames):
        if stage := _match(ROOT_STAGES, func, file):
            return stage
    return "other"


def read_collapsed(path: Path) -> Counter:
    stacks: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks[stack] += int(count)
    return stacks


def thread_of(stack: str) -> str:
    return stack.split(";", 1)[0]


def stages(stacks: Counter, *, loop_only: bool) -> Counter:
    """Samples by stage; `loop_only`: those of the thread that runs the event loop (granian's: the one
    whose stacks run the API view) only."""
    loop_threads = {thread_of(s) for s in stacks if "inference/apis/v1.py" in s}
    out: Counter = Counter()
    for stack, n in stacks.items():
        if loop_only and thread_of(stack) not in loop_threads:
            continue
        frames = stack.split(";")[1:]  # the first is the thread, with --threads
        out[stage_of(frames)] += n
    return out


def profile(server: PlatformUnderTest, out_dir: Path, connections: int, seconds: int, rate: int
            ) -> tuple[Counter, int, float]:
    """Sample every web process with py-spy under wrk; write the collapsed stacks and a flame graph.
    Return the stacks, the requests served meanwhile and its Python threads' CPU us per request meanwhile."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = str(Path(PY).parent / "py-spy")
    raw = []
    procs = []
    names = python_thread_names(server.pid())  # before py-spy record attaches
    for i, pid in enumerate(server.workers()):
        path = out_dir / f"{server.name}.{i}.txt"
        raw.append(path)
        procs.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate",
                                       str(rate), "--threads", "--gil", "--format", "raw", "-o", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)  # py-spy attached
    cpu0 = cpu_by_tid(server.pid())
    r = run_wrk(server.url, IRIS_BODY, server.headers, connections=connections, seconds=seconds - 2, threads=2)
    cpu1 = cpu_by_tid(server.pid())
    # The Python threads' CPU while py-spy sampled them (not granian's Rust threads, which it does not see).
    python = sum(v for k, v in cpu_by_thread(cpu0, cpu1, names).items() if not k.endswith("(native)"))
    cpu_us = python * 1e6 / max(1, r.requests)
    for p in procs:
        p.wait(60)
    stacks: Counter = Counter()
    for path in raw:
        if path.exists():
            stacks.update(read_collapsed(path))
            path.unlink()
    stem = f"iris-c{connections}-{server.name}"
    (out_dir / f"{stem}.txt").write_text("".join(f"{s} {n}\n" for s, n in sorted(stacks.items())))
    (out_dir / f"{stem}.svg").write_text(flame_svg(
        stacks, f"{server.name}: iris c={connections}, {len(raw)} web processes, py-spy --gil {rate} Hz, {seconds} s"))
    return stacks, r.requests, cpu_us


def print_stages(name: str, stacks: Counter, requests: int, cpu_us: float) -> None:
    """Python CPU per request by stage: a stage's share of the samples (the GIL held) times the Python
    threads' CPU per request, measured meanwhile (/proc). Not the samples / rate: on a busy machine a
    thread that holds the GIL while it waits for a core is sampled, but is not on a CPU."""
    by_stage = stages(stacks, loop_only=False)
    total = sum(by_stage.values()) or 1
    print(f"\n{name}: Python CPU by stage (py-spy --gil, {total} samples; {requests} requests; the Python threads' "
          f"CPU meanwhile {cpu_us:.0f} us/request while py-spy sampled)")
    for stage, n in by_stage.most_common():
        print(f"  {stage:40s} {cpu_us * n / total:6.1f} us  {100.0 * n / total:5.1f} %")


def flame_svg(stacks: Counter, title: str, width: int = 1600, row: int = 16) -> str:
    """A static flame graph of collapsed stacks (root at the bottom; hover a frame for its name and share)."""
    root: dict = {"n": 0, "kids": {}}
    for stack, n in stacks.items():
        node = root
        node["n"] += n
        for frame in stack.split(";"):
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += n
    total = max(1, root["n"])

    def depth(node: dict) -> int:
        return 1 + max((depth(k) for k in node["kids"].values()), default=0)

    levels = depth(root)
    height = (levels + 2) * row
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
             f'font-size="11"><rect width="100%" height="100%" fill="#fff"/>'
             f'<text x="4" y="12">{html.escape(title)} ({total} samples)</text>']

    def draw(name: str, node: dict, x: float, level: int) -> None:
        w = node["n"] / total * width
        if w < 0.5:
            return
        y = height - (level + 1) * row
        hue = 10 + (hash(name) % 40)
        label = html.escape(name)
        share = 100.0 * node["n"] / total
        parts.append(f'<g><title>{label} ({node["n"]} samples, {share:.2f}%)</title>'
                     f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="hsl({hue},90%,60%)"/>')
        chars = int(w / 7)
        if chars >= 3:
            text = name if len(name) <= chars else name[:chars - 2] + ".."
            parts.append(f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(text)}</text>')
        parts.append("</g>")
        for kid_name, kid in sorted(node["kids"].items()):
            draw(kid_name, kid, x, level + 1)
            x += kid["n"] / total * width

    draw("all", root, 0.0, 0)
    parts.append("</svg>")
    return "\n".join(parts)


# ---- main -----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--connections", default="256,1", help="comma-separated wrk connection counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default="", metavar="DIR", help="another checkout, run beside this one")
    ap.add_argument("--single-lock", action="store_true", help="add the single-lock Flask server")
    ap.add_argument("--lean", action="store_true",
                    help="add the lean reference server (bench.servers.lean): the least a batching Python server does")
    ap.add_argument("--python", default=PY, help="the platform's interpreter (default: this one)")
    ap.add_argument("--profile", default="", metavar="DIR", help="py-spy every platform into DIR after the rounds")
    ap.add_argument("--profile-seconds", type=int, default=20)
    ap.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    args = ap.parse_args()
    conns = [int(c) for c in args.connections.split(",")]

    from .__main__ import iris_artifacts

    workdir = Path(tempfile.mkdtemp(prefix="bench-request-cost-"))
    artifacts = {"iris": iris_artifacts(workdir)}
    servers = []
    try:
        servers.append(PlatformUnderTest("platform", ROOT, artifacts, args.python))
        if args.baseline:
            servers.append(PlatformUnderTest("baseline", Path(args.baseline).resolve(), artifacts, args.python))
        if args.single_lock:
            servers.append(SingleLock(*artifacts["iris"]))
        if args.lean:
            servers.append(Lean(*artifacts["iris"], workers=len(servers[0].workers())))
        for s in servers:
            warm(s)
        rows: dict[tuple[str, int], list[Row]] = defaultdict(list)
        for rnd in range(args.rounds):
            for c in conns:
                for s in servers:
                    row = measure(s, c, args.seconds)
                    rows[(s.name, c)].append(row)
                    top = ", ".join(f"{k} {v:.0f}" for k, v in list(row.threads.items())[:5])
                    print(f"round {rnd + 1} {s.name:12s} c={c:<4d} {row.rps:8.0f} req/s  p50 {row.p50_ms:6.2f} ms  "
                          f"p99 {row.p99_ms:6.2f} ms  CPU {row.cpu_us:6.0f} us/req  [{top}]"
                          + (f"  FAILED {row.failed}" if row.failed else ""), flush=True)
        print(f"\nmedians of {args.rounds} rounds, {args.seconds} s each ({cpu_model()}, {os.cpu_count()} CPUs)")
        print(f"{'server':12s} {'c':>4s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'CPU us/req':>10s}")
        for (name, c), rs in rows.items():
            print(f"{name:12s} {c:4d} {statistics.median(r.rps for r in rs):8.0f} "
                  f"{statistics.median(r.p50_ms for r in rs):7.2f} {statistics.median(r.p99_ms for r in rs):7.2f} "
                  f"{statistics.median(r.cpu_us for r in rs):10.0f}")
            names = {k for r in rs for k in r.threads}
            by_thread = {k: statistics.median(r.threads.get(k, 0.0) for r in rs) for k in names}
            print("     by thread: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                  sorted(by_thread.items(), key=lambda kv: -kv[1]) if v >= 1))
        if args.profile:
            for s in servers:
                if isinstance(s, PlatformUnderTest):
                    stacks, requests, cpu_us = profile(s, Path(args.profile), conns[0], args.profile_seconds,
                                                       args.profile_rate)
                    print_stages(s.name, stacks, requests, cpu_us)
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
