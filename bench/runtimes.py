"""The ONNX runtime beside the PyTorch runtime: the same MLP weights, one platform, one run.

The wide MLP (512-4096-4096-10, seed 0) is registered twice on one platform: `mlp` from its
safetensors weights (format ``safetensors``: the PyTorch runtime) and `mlp-onnx` exported with
``torch.onnx.export`` and a dynamic batch axis (format ``onnx``: ONNX Runtime). Both get the same
batching (32 per batch, 5 ms) and the same hardware target (1 intra-op thread per batcher), so the
only difference is the runtime. Rounds alternate between the two models (A B, A B, ...) at each
concurrency; the report gives medians and the ratio ONNX / PyTorch. The raw forward pass of each
runtime in-process (1 thread, no HTTP, batch 1 and 32) is measured first: the bound of the HTTP
figures at c=32 (a batch of 32 per forward) and the lone client's compute share at c=1.

    python -m bench.runtimes [--seconds 8] [--rounds 3] [--connections 1,32]

`make bench` runs it after the side-by-side table, the platform alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .common import (
    MLP_ARGS,
    PY,
    ROOT,
    Platform,
    WrkResult,
    mlp_body,
    mlp_config,
    mlp_onnx_config,
    run_wrk,
    write_mlp_onnx,
    write_mlp_safetensors,
)

MODELS = {"mlp": "pytorch", "mlp-onnx": "onnx"}

RAW = """
import json, sys, time
import numpy as np, onnxruntime as ort, torch
from registry.architectures import MLP
seconds = float(sys.argv[2])
torch.set_num_threads(1)
torch.manual_seed(0)
model = MLP(**json.loads(sys.argv[3])).eval()
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
out = {}
for b in (1, 32):
    x = np.random.default_rng(b).standard_normal((b, 512)).astype(np.float32)
    with torch.inference_mode():
        ours = model(torch.from_numpy(x)).numpy()
    theirs = session.run(None, {"input": x})[0]
    out[f"maxdiff{b}"] = float(np.abs(ours - theirs).max())
    for name, fn in (("torch", lambda: model(torch.from_numpy(x))), ("onnx", lambda: session.run(None, {"input": x}))):
        with torch.inference_mode():
            for _ in range(3):
                fn()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                fn()
                n += b
        out[f"{name}{b}"] = n / (time.perf_counter() - t0)
print(json.dumps(out))
"""


@dataclass
class RuntimeRows:
    """What one run measured: raw forward passes, and per concurrency the HTTP rounds of each model."""

    raw: dict[str, float] = field(default_factory=dict)
    results: dict[int, dict[str, list[WrkResult]]] = field(default_factory=dict)
    batch: dict[tuple[int, str], float] = field(default_factory=dict)  # (connections, model) -> mean batch

    def ratio(self, connections: int) -> float:
        per = self.results[connections]
        return med(per["mlp-onnx"], "rps") / med(per["mlp"], "rps")

    def table(self) -> list[str]:
        lines = ["| conc. | runtime | req/s | p50 ms | p99 ms | non-2xx | mean batch | ONNX / PyTorch |",
                 "|---|---|---|---|---|---|---|---|"]
        for conns, per in self.results.items():
            for model, runtime in MODELS.items():
                rs = per[model]
                ratio = f"{self.ratio(conns):.2f}" if model == "mlp-onnx" else ""
                lines.append(f"| {conns} | {runtime} | {med(rs, 'rps'):.1f} | {med(rs, 'p50_ms'):.2f} | "
                             f"{med(rs, 'p99_ms'):.2f} | {sum(r.non_2xx for r in rs)} | "
                             f"{self.batch.get((conns, model), 0):.1f} | {ratio} |")
        return lines

    def raw_line(self) -> str:
        r = self.raw
        if not r:
            return "Raw forward passes: not measured."
        return (f"Raw forward pass in-process (1 thread, no HTTP): PyTorch {r['torch1']:.0f} instances/s at batch 1, "
                f"{r['torch32']:.0f} at batch 32; ONNX Runtime {r['onnx1']:.0f} at batch 1, {r['onnx32']:.0f} at "
                f"batch 32 (ONNX / PyTorch {r['onnx1'] / r['torch1']:.2f} and {r['onnx32'] / r['torch32']:.2f}); "
                f"largest difference of their outputs {max(r['maxdiff1'], r['maxdiff32']):.1e}.")

    def report(self) -> list[str]:
        return [self.raw_line(), "", *self.table()]


def med(rs: list[WrkResult], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in rs)


def raw_forward(onnx_path: Path, python: str = PY, seconds: float = 3.0) -> dict[str, float]:
    import json

    res = subprocess.run([python, "-c", RAW, str(onnx_path), str(seconds), json.dumps(MLP_ARGS)], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    if res.returncode != 0:
        raise RuntimeError(f"the raw forward passes failed: {res.stderr[-1500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(*, python: str = PY, seconds: int = 8, rounds: int = 3, connections: tuple[int, ...] = (1, 32)) -> RuntimeRows:
    workdir = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    artifacts = {
        "mlp": (write_mlp_safetensors(workdir / "mlp.safetensors"), mlp_config(32, 5.0, 1024)),
        "mlp-onnx": (write_mlp_onnx(workdir / "mlp.onnx"), mlp_onnx_config(32, 5.0, 1024)),
    }
    out = RuntimeRows(raw=raw_forward(artifacts["mlp-onnx"][0], python))
    print(out.raw_line(), flush=True)
    platform = Platform(python=python)
    try:
        platform.setup()
        for model, (path, config) in artifacts.items():
            platform.register(model, path, config)
        key = platform.create_key(rate="10000000/s")
        platform.start()
        headers = {"Authorization": f"Api-Key {key}"}
        body = mlp_body(1)
        for model in MODELS:  # warm-up: every web process, the batch sizes' kernels
            run_wrk(f"{platform.url}/api/v1/models/{model}/predict", body, headers, connections=16, seconds=2)
        for conns in connections:
            per: dict[str, list[WrkResult]] = {}
            counts = {model: platform.batch_counts(model) for model in MODELS}
            for _ in range(rounds):
                for model, runtime in MODELS.items():
                    r = run_wrk(f"{platform.url}/api/v1/models/{model}/predict", body, headers, connections=conns,
                                seconds=seconds)
                    per.setdefault(model, []).append(r)
                    print(f"mlp c={conns:<3d} {runtime:8s} {r.rps:8.1f} req/s  p50 {r.p50_ms:7.2f} ms  "
                          f"p99 {r.p99_ms:7.2f} ms  non-2xx {r.codes()} {r.errors}", flush=True)
            for model in MODELS:
                after = platform.batch_counts(model)
                out.batch[(conns, model)] = (after[0] - counts[model][0]) / max(1.0, after[1] - counts[model][1])
            out.results[conns] = per
    finally:
        platform.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="1,32")
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")
    sys.path.insert(0, str(ROOT))
    rows = run(seconds=args.seconds, rounds=args.rounds,
               connections=tuple(int(c) for c in args.connections.split(",")))
    print("\n".join(rows.report()))


if __name__ == "__main__":
    main()
