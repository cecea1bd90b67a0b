"""The MLP's forward pass on this CPU, by the library whose kernels compute it.

Issue 25 asked why the platform's MLP rows moved between two machines of one kind (AMD EPYC and
Intel Xeon, 2 cores each) when TorchServe's moved less. The platform and TorchServe run the same
torch wheel, so the CPU's matrix kernels bound both; this measures those kernels alone, on the
wide MLP (512-4096-4096-10, seed 0) with one thread, at batch 1 and 32 (a lone client, a full
batch):

* ``torch``: the pinned CPU wheel as the platform runs it (``nn.Linear``: Intel MKL's SGEMM);
* ``torch-no-mkldnn``: the same with ``torch.backends.mkldnn.flags(enabled=False)``;
* ``torch-mkl-avx2``: the same with ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (MKL's AVX2 code path on a
  CPU that has AVX-512: MKL picks its kernels by vendor and instruction set);
* ``numpy``: the same weights through numpy's matmul (OpenBLAS, which picks kernels by core type);
* ``onnxruntime``: the same weights exported to ONNX, on ONNX Runtime's CPU provider (MLAS).

Each variant runs in its own process (MKL reads its environment once), variants alternate within
each round, and the report gives medians over rounds, with the CPU model and what each library
says it was built with and detected.

    python -m bench.kernels [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import MLP_ARGS, PY, ROOT, cpu_model, write_mlp_onnx

VARIANTS: dict[str, dict[str, str]] = {
    "torch": {},
    "torch-no-mkldnn": {},
    "torch-mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "numpy": {},
    "onnxruntime": {},
}

CODE = """
import json, sys, time
import numpy as np, torch
from registry.architectures import MLP
variant, seconds, onnx_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
torch.manual_seed(0)
model = MLP(**json.loads(sys.argv[4])).eval()
if variant == "numpy":
    layers = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
              for m in model.modules() if isinstance(m, torch.nn.Linear)]
    def forward(x):
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if i < len(layers) - 1:
                np.maximum(x, 0, out=x)
        return x
elif variant == "onnxruntime":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    forward = lambda x: session.run(None, {"input": x})[0]
else:
    forward = lambda x: model(torch.from_numpy(x)).numpy()
out = {}
with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=variant != "torch-no-mkldnn"):
    for b in (1, 32):
        x = np.random.default_rng(b).standard_normal((b, 512)).astype(np.float32)
        for _ in range(5):
            forward(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            forward(x)
            n += b
        out[b] = n / (time.perf_counter() - t0)
print(json.dumps(out))
"""

BUILD = """
import json, torch, numpy as np, onnxruntime as ort
cfg = torch.__config__.show()
info = {"torch": torch.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": next((l.strip() for l in cfg.splitlines() if "Math Kernel Library" in l), "none"),
        "onednn": next((l.strip() for l in cfg.splitlines() if "MKL-DNN" in l or "oneDNN" in l), "none")}
try:
    from threadpoolctl import threadpool_info
    info["numpy_blas"] = [{k: p.get(k) for k in ("internal_api", "version", "architecture")}
                          for p in threadpool_info() if p.get("user_api") == "blas"]
except ImportError:
    pass
print(json.dumps(info))
"""


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKL_")}
    return dict(env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **extra)


def measure(variant: str, onnx_path: Path, seconds: float, python: str = PY) -> dict[int, float]:
    res = subprocess.run([python, "-c", CODE, variant, str(seconds), str(onnx_path), json.dumps(MLP_ARGS)],
                         cwd=ROOT, capture_output=True, text=True, env=_env(VARIANTS[variant]))
    if res.returncode != 0:
        raise RuntimeError(f"{variant} failed: {res.stderr[-1500:]}")
    return {int(k): v for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def build_info(python: str = PY) -> dict:
    res = subprocess.run([python, "-c", BUILD], cwd=ROOT, capture_output=True, text=True, env=_env({}))
    return json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {"error": res.stderr[-500:]}


def medians(rounds: list[dict[str, dict[int, float]]]) -> dict[str, dict[int, float]]:
    """Variant -> batch -> the median over rounds of instances/s."""
    return {v: {b: statistics.median(r[v][b] for r in rounds) for b in (1, 32)} for v in rounds[0]}


def table(med: dict[str, dict[int, float]]) -> list[str]:
    base = med["torch"]
    lines = ["| kernels | batch 1 inst./s | batch 32 inst./s | batch 1 × torch | batch 32 × torch |",
             "|---|---|---|---|---|"]
    for v, r in med.items():
        lines.append(f"| {v} | {r[1]:.0f} | {r[32]:.0f} | {r[1] / base[1]:.2f} | {r[32] / base[32]:.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", default=PY, help="the interpreter to measure (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    onnx_path = write_mlp_onnx(Path(tempfile.mkdtemp(prefix="bench-kernels-")) / "mlp.onnx")
    rounds = []
    for i in range(args.rounds):
        rounds.append({v: measure(v, onnx_path, args.seconds, args.python) for v in VARIANTS})
        print(f"round {i + 1}: " + ", ".join(f"{v} {r[1]:.0f}/{r[32]:.0f}" for v, r in rounds[-1].items()), flush=True)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, {args.python}")
    print(json.dumps(build_info(args.python)))
    print("\n".join(table(medians(rounds))))


if __name__ == "__main__":
    main()
