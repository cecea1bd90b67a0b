"""In-process batching benchmark (no HTTP): the request path below the view, on any device.

32 clients each send one-instance requests through ServedVersion.prepare -> Batcher -> finish,
as the API does, for the 512-4096-4096-10 MLP. Batching on (max_batch_size 32) vs off (1), side
by side in one run. Clients are coroutines on one event loop awaiting ``Batcher.run``, as the web
server's front serves them (``--clients-as loop``, the default), or threads blocking on
``submit().result()`` (``--clients-as threads``, as the WSGI deployment's threads did). Used on GPU
hosts, where wrk and the web server are not the point:

    python -m bench.runtime_batching --device cuda --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")


def run(device: str, max_batch_size: int, clients: int, seconds: float, artifact: Path, mode: str = "loop") -> dict:
    import numpy as np

    from inference.pipeline.served import ServedVersion, optimizer_for
    from inference.runtime.batcher import Batcher
    from inference.runtime.pytorch import LoadSpec
    from registry.schemas import parse_tensor_schema

    from .common import MLP_ARGS

    dtype, index = (device.split(":") + ["0"])[:2]
    spec = LoadSpec(
        label="mlp", read_artifact=artifact.read_bytes, format="safetensors",
        inputs=parse_tensor_schema([{"name": "input", "datatype": "FP32", "shape": [512]}], where="inputs"),
        outputs=parse_tensor_schema([{"name": "output", "datatype": "FP32", "shape": [10]}], where="outputs"),
        architecture="registry.architectures.MLP", architecture_args=MLP_ARGS,
        device_type=dtype, device_index=int(index), cpu_threads=1,
        optimizer=optimizer_for(target_name=dtype, device_type=dtype),  # as the platform serves it
    )
    served = ServedVersion(spec)
    served.load()
    batcher = Batcher(served.runtime.predict, max_batch_size=max_batch_size, max_batch_delay_ms=2, max_queue_size=4096)
    instance = np.random.default_rng(0).standard_normal((1, 512)).round(4).tolist()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        local = []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            prepared = served.prepare(instance)
            out = batcher.submit(prepared.arrays).result(30)
            served.finish(out, prepared)
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    async def coroutine_client() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            prepared = served.prepare(instance)
            pending = await batcher.run(prepared.arrays, timeout=30)
            served.finish(pending.outputs(), prepared)
            latencies.append(time.perf_counter() - t0)

    async def loop_clients() -> None:
        await asyncio.gather(*[coroutine_client() for _ in range(clients)])

    started = time.perf_counter()
    if mode == "loop":
        asyncio.run(loop_clients())
    else:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - started
    batcher.stop()
    served.unload()
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "mean_batch": batcher.stats.inference_count / max(1, batcher.stats.exec_count),
    }


def main() -> None:
    import django

    django.setup()
    from .common import write_mlp_safetensors

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients-as", choices=("loop", "threads"), default="loop")
    args = ap.parse_args()
    artifact = write_mlp_safetensors(Path(tempfile.mkdtemp()) / "mlp.safetensors")
    results: dict[int, list[dict]] = {32: [], 1: []}
    for _ in range(args.rounds):
        for mbs in results:
            r = run(args.device, mbs, args.clients, args.seconds, artifact, args.clients_as)
            results[mbs].append(r)
            print(f"max_batch_size {mbs:3d}: {r['rps']:9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                  f"p99 {r['p99_ms']:7.2f} ms  mean batch {r['mean_batch']:.1f}", flush=True)
    import torch

    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"\n{args.device} ({name}), torch {torch.__version__}, {args.clients} clients as {args.clients_as}, "
          f"medians of {args.rounds}:")
    print("| max_batch_size | req/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|")
    for mbs, rs in results.items():
        print(f"| {mbs} | {statistics.median(r['rps'] for r in rs):.1f} | {statistics.median(r['p50_ms'] for r in rs):.2f} | "
              f"{statistics.median(r['p99_ms'] for r in rs):.2f} | {statistics.median(r['mean_batch'] for r in rs):.1f} |")


if __name__ == "__main__":
    main()
