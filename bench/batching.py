"""Batching on vs off: the 512-4096-4096-10 MLP, 32 concurrent clients (issue: sync inference).

Two versions of the same weights are registered as two models: `mlp` (max_batch_size 32,
max_batch_delay_ms 5) and `mlp-unbatched` (max_batch_size 1). Rounds alternate
(A B A B ...) and the medians are reported, with the mean batch size formed
(inference_count / exec_count from /metrics).

    python -m bench.batching [--seconds 15] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from .common import Platform, mlp_body, mlp_config, run_wrk, write_mlp_safetensors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()

    platform = Platform()
    try:
        platform.setup()
        artifact = write_mlp_safetensors(Path(tempfile.mkdtemp()) / "mlp.safetensors")
        platform.register("mlp", artifact, mlp_config(32, 5.0))
        platform.register("mlp-unbatched", artifact, mlp_config(1, 0.0))
        key = platform.create_key()
        platform.start()
        body = mlp_body(1)
        headers = {"Authorization": f"Api-Key {key}"}
        for name in ("mlp", "mlp-unbatched"):  # warm up: load, first batches
            run_wrk(f"{platform.url}/api/v1/models/{name}/predict", body, headers, connections=4, seconds=2)
        results: dict[str, list] = {"mlp": [], "mlp-unbatched": []}
        counts0 = {n: platform.batch_counts(n) for n in results}
        for _ in range(args.rounds):
            for name in results:
                r = run_wrk(f"{platform.url}/api/v1/models/{name}/predict", body, headers,
                            connections=args.connections, seconds=args.seconds)
                results[name].append(r)
                print(f"{name:14s} {r.rps:8.1f} req/s  p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  non-2xx {r.non_2xx}", flush=True)
        print()
        print("| version | req/s | p50 ms | p99 ms | mean batch size | non-2xx |")
        print("|---|---|---|---|---|---|")
        for name, rs in results.items():
            inf, exe = platform.batch_counts(name)
            inf0, exe0 = counts0[name]
            mean_batch = (inf - inf0) / max(1.0, exe - exe0)
            print(f"| {name} | {statistics.median(r.rps for r in rs):.1f} | {statistics.median(r.p50_ms for r in rs):.1f} | "
                  f"{statistics.median(r.p99_ms for r in rs):.1f} | {mean_batch:.2f} | {sum(r.non_2xx for r in rs)} |")
        ratio = statistics.median(r.rps for r in results["mlp"]) / statistics.median(r.rps for r in results["mlp-unbatched"])
        print(f"\nbatching on / off throughput ratio: {ratio:.2f}x  (web RSS {platform.rss_bytes() / 2**20:.0f} MiB)")
    finally:
        platform.cleanup()


if __name__ == "__main__":
    main()
