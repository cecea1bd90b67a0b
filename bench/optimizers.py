"""Load-time optimisers side by side (inference/runtime/optimizers), on the benchmark's wide MLP.

Each optimiser loads the 512-4096-4096-10 MLP (``MLP_ARGS``) through ``PyTorchRuntime`` in a
worker process of its own, with 1 torch thread as each batcher computes: its load time and
how much the process grew are its own. Then the workers compute in turn, never two at once:
at each batch size the rounds alternate between them (A B C D, A B C D, ...), so a slow
moment on a shared machine hits each alike; the report gives the median of the rounds.

``compile`` is measured twice: as the optimiser asks for it, and with
``TORCHINDUCTOR_FREEZING=1`` in the worker's environment (the process-wide switch without which
torch 2.13 does not fold the weights into the graph; see optimizers/compile.py). Each worker
compiles into an empty Inductor cache, so its load time is a first start's.

    python -m bench.optimizers [--seconds 2] [--rounds 3] [--batches 1,8,32]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import MLP_ARGS, PY, ROOT, cpu_model, write_mlp_safetensors


@dataclass
class Variant:
    label: str
    optimizer: str
    env: dict = field(default_factory=dict)


VARIANTS = [
    Variant("none", "none"),
    Variant("onednn", "onednn"),
    Variant("jit", "jit"),
    Variant("compile", "compile"),
    Variant("compile, TORCHINDUCTOR_FREEZING=1", "compile", {"TORCHINDUCTOR_FREEZING": "1"}),
]


def rss_mib(field_name: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(optimizer: str, artifact: Path) -> None:
    """Load the MLP with `optimizer`, report, then answer "run <batch> <seconds>", "rss" and "quit" on stdin."""
    import django

    django.setup()
    import numpy as np

    from inference.runtime.pytorch import LoadSpec, PyTorchRuntime
    from registry.schemas import parse_tensor_schema

    spec = LoadSpec(
        label=f"mlp ({optimizer})", read_artifact=artifact.read_bytes, format="safetensors",
        inputs=parse_tensor_schema([{"name": "input", "datatype": "FP32", "shape": [512]}], where="inputs"),
        outputs=parse_tensor_schema([{"name": "output", "datatype": "FP32", "shape": [10]}], where="outputs"),
        architecture="registry.architectures.MLP", architecture_args=MLP_ARGS, cpu_threads=1, optimizer=optimizer,
    )
    runtime = PyTorchRuntime(spec)
    before = rss_mib()
    started = time.perf_counter()
    runtime.load()
    print(json.dumps({"load_s": time.perf_counter() - started, "rss_load": rss_mib() - before,
                      "applied": runtime.optimizer_applied, "rss_before": before}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            batch, seconds = int(cmd[1]), float(cmd[2])
            rows = {"input": np.random.default_rng(batch).standard_normal((batch, 512)).astype(np.float32)}
            for _ in range(3):  # a first call at a batch size may build its kernels
                runtime.predict(rows)
            calls, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                runtime.predict(rows)
                calls += 1
            print(json.dumps({"ms": 1000 * elapsed / calls}), flush=True)
        elif cmd[0] == "rss":
            print(json.dumps({"rss": rss_mib() - before}), flush=True)
        else:
            return


class Worker:
    def __init__(self, variant: Variant, artifact: Path, workdir: Path):
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="inference_platform.settings", PYTHONPATH=str(ROOT),
                   INFERENCE_DATA_DIR=str(workdir / "data"), DJANGO_LOG_LEVEL="WARNING",
                   TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-", dir=workdir),
                   MALLOC_ARENA_MAX=os.environ.get("MALLOC_ARENA_MAX", "2"),  # as deploy/run.sh starts it
                   **variant.env)
        self.variant = variant
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.optimizers", "--worker", variant.optimizer, "--artifact", str(artifact)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.loaded = self.reply()

    def reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.variant.label} worker exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(30)


def machine() -> str:
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--worker")
    ap.add_argument("--artifact", type=Path)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.artifact)
        return
    batches = [int(b) for b in args.batches.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-optimizers-"))
    artifact = write_mlp_safetensors(workdir / "mlp.safetensors")
    workers: list[Worker] = []
    try:
        for variant in VARIANTS:  # one at a time: each load alone on the machine
            workers.append(Worker(variant, artifact, workdir))
            w = workers[-1]
            print(f"{variant.label}: loaded in {w.loaded['load_s']:.2f} s as {w.loaded['applied']}, "
                  f"RSS +{w.loaded['rss_load']:.0f} MiB", file=sys.stderr, flush=True)
        ms: dict[tuple[str, int], list[float]] = {}
        for batch in batches:
            for r in range(args.rounds):
                for w in workers:
                    got = w.ask(f"run {batch} {args.seconds}")["ms"]
                    ms.setdefault((w.variant.label, batch), []).append(got)
                    print(f"batch {batch} round {r + 1} {w.variant.label}: {got:.3f} ms", file=sys.stderr, flush=True)
        rss_after = {w.variant.label: w.ask("rss")["rss"] for w in workers}
    finally:
        for w in workers:
            w.close()
    med = {k: statistics.median(v) for k, v in ms.items()}
    print(f"\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"`python -m bench.optimizers --seconds {args.seconds:g} --rounds {args.rounds}`: ms per forward "
          f"through `PyTorchRuntime.predict`, 1 torch thread, median of {args.rounds} rounds of {args.seconds:g} s "
          f"(x: speed-up over none)\n")
    head = "| optimiser | applied | load s | RSS +MiB after load | after the runs | " + " | ".join(
        f"batch {b} ms" for b in batches) + " |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for w in workers:
        label = w.variant.label
        cells = [f"{med[label, b]:.2f} ({med['none', b] / med[label, b]:.2f}x)" for b in batches]
        print(f"| {label} | {w.loaded['applied']} | {w.loaded['load_s']:.2f} | {w.loaded['rss_load']:.0f} | "
              f"{rss_after[label]:.0f} | " + " | ".join(cells) + " |")
    spread = max((max(v) - min(v)) / statistics.median(v) for v in ms.values())
    print(f"\nlargest spread of a cell's rounds: {100 * spread:.0f} % of its median")


if __name__ == "__main__":
    main()
