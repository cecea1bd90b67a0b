"""The servers of the side-by-side benchmark, each started as its own process tree.

Every server offers the same two models (the 512-4096-4096-10 MLP and the iris MLP, same
safetensors weights, 1 torch thread) and is driven by wrk with its native request body:

* ``platform``: the web server as `make run` starts it (granian + the front over RSGI, its default, 2 processes),
  API key auth, rate limit (a high rate), validation, metrics and request records all on;
  iris with its demo pipeline. ``platform-wsgi`` (not in the default list): the same platform
  under gunicorn's threads.
* ``single-lock``: a Flask app with one global lock around ``model(x)``, under gunicorn.
* ``torchserve``: its own venv; batch_size 32, max_batch_delay 5 ms, 1 worker, token auth
  off for the benchmark only. ``torchserve-default``: the same with its documented default of
  workers per model, one per logical CPU (``default_workers_per_model``: "number of logical
  processors available to the JVM"), 2 on the benchmark machine.
* ``mlserver``: its own venv; adaptive batching max_batch_size 32, max_batch_time 0.005.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import PY, ROOT, Platform, child_pids, free_port, rss_of, wait_http

ENVS = ROOT / "bench" / ".envs"


def ensure_venv(name: str, packages: list[str]) -> Path:
    """Create bench/.envs/<name> with `packages` (once; a stamp file records what was installed)."""
    env = ENVS / name
    stamp = env / ".installed"
    wanted = "\n".join(packages)
    if stamp.exists() and stamp.read_text() == wanted:
        return env
    shutil.rmtree(env, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    subprocess.run([str(env / "bin" / "pip"), "install", "-q", *packages], check=True)
    stamp.write_text(wanted)
    return env


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss_of(p)
        todo.extend(child_pids(p))
    return total


@dataclass
class Server:
    name: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, model: str) -> str:
        raise NotImplementedError

    def body(self, model: str, rows: list) -> str:
        return json.dumps({"instances": rows})

    def headers(self) -> dict[str, str]:
        return {}

    def start(self, artifacts: dict[str, tuple[Path, dict]]) -> None:
        raise NotImplementedError

    def rss(self) -> int:
        return tree_rss(self.proc.pid) if self.proc else 0

    def _spawn(self, cmd: list[str], env: dict, cwd: Path | None = None) -> None:
        log = open(self.workdir / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd or ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return (self.workdir / "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def requirements(path: Path) -> list[str]:
    """The requirement lines of a requirements file, comments and blank lines left out."""
    return [spec for spec in (line.split("#")[0].strip() for line in path.read_text().splitlines()) if spec]


def pinned(*names: str) -> list[str]:
    """The project's own pins (requirements*.txt) of these packages: 'flask==3.1.3', ..."""
    pins = {spec.split("==")[0].strip().lower(): spec
            for req in sorted(ROOT.glob("requirements*.txt")) for spec in requirements(req) if "==" in spec}
    return [pins[n.lower()] for n in names]


def runtime_python() -> str:
    """The interpreter of bench/.envs/platform: requirements.txt alone, as a deployment installs
    the platform (`make run` on a fresh machine, the container image). The development venv also
    holds the test tools, some of which the web process would import (DRF imports `requests`
    when it is installed: 5 MiB of RSS that no deployment has)."""
    return str(ensure_venv("platform", requirements(ROOT / "requirements.txt")) / "bin" / "python")


class PlatformServer(Server):
    def __init__(self, python: str = PY, root: Path = ROOT, name: str = "platform") -> None:
        super().__init__(name)
        self.platform = Platform(port=self.port, python=python, root=root)
        self.key = ""

    def url(self, model: str) -> str:
        return f"{self.base}/api/v1/models/{model}/predict"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.key}"}

    def prepare(self, artifacts: dict[str, tuple[Path, dict]]) -> None:
        """Migrate the data dir, register the models, create the key."""
        p = self.platform
        p.setup()
        for model, (path, config) in artifacts.items():
            p.register(model, path, config)
        self.key = p.create_key(rate="10000000/s")

    def start(self, artifacts: dict[str, tuple[Path, dict]]) -> None:
        self.prepare(artifacts)
        self.platform.start()
        self.proc = self.platform.proc

    def rss(self) -> int:
        return self.platform.rss_bytes()

    def stop(self) -> None:
        self.platform.cleanup()
        self.proc = None


class PlatformWSGIServer(PlatformServer):
    """The platform's WSGI deployment (gunicorn, threads: `inference_platform.wsgi:application`),
    beside ``platform`` in one run: what the async front changes (``--servers ...,platform-wsgi``)."""

    def __init__(self, python: str = PY) -> None:
        super().__init__(python)
        self.name = "platform-wsgi"
        self.platform.server = "gunicorn"


class SingleLockServer(Server):
    """Runs from bench/.envs/single-lock (torch, Flask, gunicorn and the weights' readers at the
    project's pins, nothing else), so its RSS compares with the platform's runtime venv."""

    def __init__(self, model: str) -> None:
        super().__init__(f"single-lock:{model}")
        self.model = model

    def url(self, model: str) -> str:
        return f"{self.base}/predict"

    def start(self, artifacts: dict[str, tuple[Path, dict]]) -> None:
        path, config = artifacts[self.model]
        env = dict(os.environ, ARTIFACT=str(path), ARCH_ARGS=json.dumps(config["architecture_args"]),
                   PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        env_dir = ensure_venv("single-lock", pinned("torch", "flask", "werkzeug", "gunicorn", "safetensors", "numpy"))
        gunicorn = str(env_dir / "bin" / "gunicorn")
        self._spawn([gunicorn, "-w", "1", "--threads", "32", "-k", "gthread", "-b", f"127.0.0.1:{self.port}",
                     "bench.servers.single_lock:app"], env)
        wait_http(f"{self.base}/healthz", 120)


class TorchServeServer(Server):
    def __init__(self, workers: int = 1, name: str = "torchserve") -> None:
        super().__init__(name)
        self.workers = workers
        self.mgmt_port = free_port()
        self.metrics_port = free_port()

    @property
    def tmpdir(self) -> dict[str, str]:
        """TorchServe keeps its pid file in the temporary directory and refuses to start while the one
        there names a live server: each instance (1 worker, default workers) gets its own."""
        return {"TMPDIR": str(self.workdir)}

    def url(self, model: str) -> str:
        return f"{self.base}/predictions/{model}"

    def start(self, artifacts: dict[str, tuple[Path, dict]]) -> None:
        env_dir = ensure_venv("torchserve", [*pinned("torch"), "torchserve==0.12.0", "torch-model-archiver==0.12.0",
                                             *pinned("safetensors", "numpy"), "pyyaml==6.0.4", "psutil", "packaging"])
        store = self.workdir / "store"
        store.mkdir()
        for model, (path, config) in artifacts.items():
            stage = self.workdir / f"stage-{model}"
            stage.mkdir()
            shutil.copy(path, stage / "model.safetensors")
            (stage / "arch.json").write_text(json.dumps(config["architecture_args"]))
            subprocess.run(
                [str(env_dir / "bin" / "torch-model-archiver"), "--model-name", model, "--version", "1.0",
                 "--handler", str(ROOT / "bench" / "servers" / "ts_handler.py"),
                 "--extra-files", f"{stage / 'model.safetensors'},{stage / 'arch.json'}",
                 "--export-path", str(store), "--force"],
                check=True,
            )
        models = {
            m: {"1.0": {"marName": f"{m}.mar", "minWorkers": self.workers, "maxWorkers": self.workers, "batchSize": 32,
                        "maxBatchDelay": 5, "responseTimeout": 120}}
            for m in artifacts
        }
        props = self.workdir / "config.properties"
        props.write_text("\n".join([
            f"inference_address=http://127.0.0.1:{self.port}",
            f"management_address=http://127.0.0.1:{self.mgmt_port}",
            f"metrics_address=http://127.0.0.1:{self.metrics_port}",
            # Its gRPC ports default to 7070/7071: each instance (1 worker, default workers) gets its own.
            f"grpc_inference_port={free_port()}",
            f"grpc_management_port={free_port()}",
            f"model_store={store}",
            "load_models=" + ",".join(f"{m}.mar" for m in artifacts),
            f"default_workers_per_model={self.workers}",
            # The benchmark only: token auth and the model API are off so wrk needs no token.
            "disable_token_authorization=true",
            "enable_model_api=false",
            "install_py_dep_per_model=false",
            "job_queue_size=1000",
            "number_of_netty_threads=4",
            "models=" + json.dumps(models),
        ]) + "\n")
        env = dict(os.environ, OMP_NUM_THREADS="1", TS_DISABLE_SYSTEM_METRICS="true",
                   PATH=f"{env_dir / 'bin'}:{os.environ['PATH']}", **self.tmpdir)
        self._spawn([str(env_dir / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
                     "--ts-config", str(props), "--model-store", str(store), "--disable-token-auth"], env,
                    cwd=self.workdir)
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                import urllib.request

                for m in artifacts:
                    urllib.request.urlopen(urllib.request.Request(
                        self.url(m), data=self.body(m, [[0.0] * config_in(artifacts[m][1])]).encode(),
                        headers={"Content-Type": "application/json"}), timeout=5).read()
                return
            except Exception:  # noqa: BLE001
                if self.proc.poll() is not None:
                    raise RuntimeError(f"torchserve exited: {self.log_tail()}") from None
                time.sleep(1)
        raise RuntimeError(f"torchserve did not become ready: {self.log_tail()}")

    def stop(self) -> None:
        env_dir = ENVS / "torchserve"
        if (env_dir / "bin" / "torchserve").exists():
            subprocess.run([str(env_dir / "bin" / "torchserve"), "--stop"], cwd=self.workdir,
                           capture_output=True, timeout=60, env=dict(os.environ, **self.tmpdir))
        super().stop()


def config_in(config: dict) -> int:
    return int(config["architecture_args"]["in_features"])


class MLServerServer(Server):
    def __init__(self) -> None:
        super().__init__("mlserver")

    def url(self, model: str) -> str:
        return f"{self.base}/v2/models/{model}/infer"

    def body(self, model: str, rows: list) -> str:
        return json.dumps({"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                                       "data": rows}]})

    def start(self, artifacts: dict[str, tuple[Path, dict]]) -> None:
        env_dir = ensure_venv("mlserver", [*pinned("torch"), "mlserver==1.7.1", *pinned("safetensors"),
                                           # uvloop 0.21+ breaks MLServer 1.7's worker start-up
                                           "uvloop==0.19.0"])
        shutil.copy(ROOT / "bench" / "servers" / "mlserver_runtime.py", self.workdir / "mlserver_runtime.py")
        (self.workdir / "settings.json").write_text(json.dumps({
            "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1",
            "debug": False, "metrics_endpoint": None,
        }))
        for model, (_path, _config) in artifacts.items():
            d = self.workdir / model
            d.mkdir()
            (d / "model-settings.json").write_text(json.dumps({
                "name": model, "implementation": "mlserver_runtime.MLPRuntime",
                "max_batch_size": 32, "max_batch_time": 0.005,
                "parameters": {"environment_path": None},
            }))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(self.workdir))
        # Each model's runtime reads its weights from the environment: one mlserver per
        # model would double the processes, so the runtime picks by model name instead.
        env["ARTIFACTS"] = json.dumps({m: [str(p), c["architecture_args"]] for m, (p, c) in artifacts.items()})
        self._spawn([str(env_dir / "bin" / "mlserver"), "start", str(self.workdir)], env, cwd=self.workdir)
        wait_http(f"{self.base}/v2/health/ready", 240)
        for m in artifacts:
            wait_http(f"{self.base}/v2/models/{m}/ready", 120)
