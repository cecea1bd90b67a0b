"""Shared pieces of the benchmarks: models, a platform instance, wrk, metrics scraping."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

MLP_ARGS = {"in_features": 512, "hidden": [4096, 4096], "out_features": 10}


def mlp_config(max_batch_size: int, delay_ms: float = 5.0, queue: int = 1024) -> dict:
    return {
        "format": "safetensors",
        "architecture": "registry.architectures.MLP",
        "architecture_args": MLP_ARGS,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [512]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [10]}],
        "batching": {"max_batch_size": max_batch_size, "max_batch_delay_ms": delay_ms, "max_queue_size": queue},
        "hardware": "cpu",
    }


def write_mlp_safetensors(path: Path) -> Path:
    """Write the 512-4096-4096-10 MLP (seed 0) as safetensors."""
    import torch
    from safetensors.torch import save_file

    from registry.architectures import MLP

    torch.manual_seed(0)
    model = MLP(**MLP_ARGS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def mlp_onnx_config(max_batch_size: int, delay_ms: float = 5.0, queue: int = 1024) -> dict:
    """The same MLP's config for its ONNX export (format onnx: no architecture, the graph is the model)."""
    cfg = {k: v for k, v in mlp_config(max_batch_size, delay_ms, queue).items()
           if k not in ("architecture", "architecture_args")}
    return {**cfg, "format": "onnx"}


def write_mlp_onnx(path: Path) -> Path:
    """Export the 512-4096-4096-10 MLP (seed 0: the weights of write_mlp_safetensors) to ONNX with a
    dynamic batch axis, as docs/registry.md tells users to (the TorchScript-based exporter)."""
    import warnings

    import torch

    from registry.architectures import MLP

    torch.manual_seed(0)
    model = MLP(**MLP_ARGS).eval()
    with warnings.catch_warnings():  # dynamo=False is deprecated, not gone; it needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 512),), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    return path


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo): every report names the machine it ran on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlp_body(instances: int = 1, seed: int = 1) -> str:
    import numpy as np

    rng = np.random.default_rng(seed)
    return json.dumps({"instances": rng.standard_normal((instances, 512)).round(4).tolist()})


@dataclass
class Platform:
    """A platform instance in its own data dir, started as `make run` does (``server="front"``:
    `python -m inference_platform.serve`), or under gunicorn (``server="gunicorn"``: the WSGI deployment)."""

    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-platform-")))
    port: int = field(default_factory=free_port)
    threads: int = 32  # gunicorn's request threads (the WSGI deployment only)
    server: str = "front"
    metrics_token: str = "bench-metrics-token"
    proc: subprocess.Popen | None = None
    extra_env: dict = field(default_factory=dict)
    python: str = PY  # the interpreter of the venv the platform runs from
    root: Path = ROOT  # the checkout it runs from (another commit's: `python -m bench --baseline DIR`)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "INFERENCE_BROKER")}
        env.update(
            INFERENCE_DATA_DIR=str(self.data_dir),
            HOST="127.0.0.1",
            PORT=str(self.port),
            GUNICORN_THREADS=str(self.threads),
            INFERENCE_METRICS_TOKEN=self.metrics_token,
            DJANGO_LOG_LEVEL="WARNING",
            PYTHONPATH=str(self.root),
        )
        env.update(self.extra_env)
        return env

    def manage(self, *args: str) -> str:
        out = subprocess.run([self.python, "manage.py", *args], cwd=self.root, env=self.env, capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    def setup(self) -> None:
        self.manage("migrate", "--noinput")

    def register(self, name: str, artifact: Path, config: dict, alias: str = "production") -> dict:
        cfg = self.data_dir / f"{name}.json"
        cfg.write_text(json.dumps(config))
        return json.loads(self.manage("register_model", "--name", name, "--artifact", str(artifact),
                                      "--config", str(cfg), "--alias", alias).strip().splitlines()[-1])

    def create_key(self, rate: str = "1000000/s") -> str:
        return self.manage("create_api_key", "--name", "bench", "--rate", rate).strip().splitlines()[-1]

    @property
    def log_path(self) -> Path:
        return self.data_dir / "web.log"

    def start(self) -> None:
        if self.server == "gunicorn":
            command = [str(Path(self.python).parent / "gunicorn"), "-c", "deploy/gunicorn.conf.py",
                       "inference_platform.wsgi:application"]
        else:
            command = [self.python, "-m", "inference_platform.serve"]
        # The server's log goes to a file: an unread pipe fills up and blocks the server.
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_http(f"{self.url}/healthz")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        req = urllib.request.Request(f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.metrics_token}"})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def batch_counts(self, model: str) -> tuple[float, float]:
        """Return (inference_count, exec_count) of a model's versions in this process."""
        m = self.metrics()
        inf = sum(v for (n, lab), v in m.items() if n == "inference_count_total" and dict(lab).get("model") == model)
        exe = sum(v for (n, lab), v in m.items() if n == "inference_exec_count_total" and dict(lab).get("model") == model)
        return inf, exe

    def worker_rss(self) -> list[int]:
        """RSS of each web process (the children of the server's main process)."""
        return [rss_of(pid) for pid in (child_pids(self.proc.pid) if self.proc else [])]

    def rss_bytes(self) -> int:
        """RSS of the web process(es), summed."""
        return sum(self.worker_rss())


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:  # noqa: BLE001
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: str = ""
    by_code: dict[int, int] = field(default_factory=dict)  # responses outside 2xx, by status code
    no_retry_after: int = 0  # 503 responses without a Retry-After header
    # status -> (responses, p50 ms, p99 ms); only with run_wrk(latency_by_code=True)
    latency_by_code: dict[int, tuple[int, float, float]] = field(default_factory=dict)

    def codes(self) -> str:
        """The non-2xx responses by code ('429: 3, 503: 12'), else their count."""
        return format_codes(self.by_code) or str(self.non_2xx)


def format_codes(codes: dict[int, int]) -> str:
    """'429: 3, 503: 12'; empty for no codes."""
    return ", ".join(f"{c}: {n}" for c, n in sorted(codes.items()))


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


# Counts the responses outside 2xx by status code, and the 503s without Retry-After, in each wrk
# thread (its own Lua state); done() adds them up and prints them after wrk's summary.
_COUNT_CODES_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) codes = {}; no_retry_after = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then
    codes[status] = (codes[status] or 0) + 1
    if status == 503 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
      no_retry_after = no_retry_after + 1
    end
  end
end
function done(summary, latency, requests)
  local total, missing = {}, 0
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("codes")) do total[code] = (total[code] or 0) + n end
    missing = missing + t:get("no_retry_after")
  end
  for code, n in pairs(total) do io.write(string.format("status %d: %d\\n", code, n)) end
  io.write(string.format("503 without retry-after: %d\\n", missing))
end
"""


# Latency by status code. wrk's own latency figures mix every response; to tell a fast 503 from
# a served 200, each response is timed in Lua (LuaJIT's ffi reads CLOCK_MONOTONIC). A wrk thread
# matches a response to its request only when it drives one connection, so run_wrk gives every
# connection its own thread for this (latency_by_code=True). Each thread keeps a histogram in a
# flat table (wrk copies only flat tables between threads): key status * 100000 + bucket, buckets
# 2.5% wide (log(us) * 40). done() prints, per status, "latency N: count p50_us p99_us".
_LATENCY_BY_CODE_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3 end
local count_codes, count_init, count_done = response, init, done
function init(args) count_init(args); hist = {}; sent = nil end
function request() sent = now_us(); return wrk.format() end
function response(status, headers, body)
  count_codes(status, headers, body)
  if sent then
    local key = status * 100000 + math.floor(math.log(math.max(1, now_us() - sent)) * 40)
    hist[key] = (hist[key] or 0) + 1
    sent = nil
  end
end
function done(summary, latency, requests)
  count_done(summary, latency, requests)
  local by_code = {}
  for _, t in ipairs(threads) do
    for key, n in pairs(t:get("hist")) do
      local code = math.floor(key / 100000)
      by_code[code] = by_code[code] or {}
      by_code[code][key % 100000] = (by_code[code][key % 100000] or 0) + n
    end
  end
  for code, buckets in pairs(by_code) do
    local order, total = {}, 0
    for b, n in pairs(buckets) do table.insert(order, b); total = total + n end
    table.sort(order)
    local function pct(p)
      local seen = 0
      for _, b in ipairs(order) do
        seen = seen + buckets[b]
        if seen >= total * p then return math.exp((b + 0.5) / 40) end
      end
    end
    io.write(string.format("latency %d: %d %.0f %.0f\\n", code, total, pct(0.5), pct(0.99)))
  end
end
"""


def run_wrk(url: str, body: str, headers: dict[str, str], *, connections: int, seconds: int,
            threads: int = 1, timeout_s: int = 10, latency_by_code: bool = False) -> WrkResult:
    """Run wrk against url with a POST body; return throughput and latency percentiles.

    latency_by_code: time every response in Lua and report p50/p99 per status code; wrk then
    runs a thread per connection (`threads` is ignored)."""
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lua.write("\n".join(lines) + "\n" + _COUNT_CODES_LUA + (_LATENCY_BY_CODE_LUA if latency_by_code else ""))
    if latency_by_code:
        threads = connections
    lua.close()
    try:
        out = subprocess.run(
            ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s",
             "--latency", "-s", lua.name, url],
            capture_output=True, text=True, timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(lua.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    errors = re.search(r"Socket errors:.*", out)
    by_code = {int(c): int(n) for c, n in re.findall(r"^status (\d+): (\d+)$", out, re.M)}
    missing = re.search(r"^503 without retry-after: (\d+)$", out, re.M)
    latency = {int(c): (int(n), int(p50) / 1000, int(p99) / 1000)
               for c, n, p50, p99 in re.findall(r"^latency (\d+): (\d+) (\d+) (\d+)$", out, re.M)}
    return WrkResult(rps=rps, p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
                     p99_ms=_ms(p99.group(1)) if p99 else float("nan"), requests=requests,
                     non_2xx=int(non2xx.group(1)) if non2xx else 0, errors=errors.group(0) if errors else "",
                     by_code=by_code, no_retry_after=int(missing.group(1)) if missing else 0,
                     latency_by_code=latency)
