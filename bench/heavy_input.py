"""Does CPU-heavy input stall a web process? `/healthz` latency while clients send heavy images.

The `digits` demo model takes base64 PNGs through its `image` step. Each client sends one
request of `--images` PNGs of 4096x4096 pixels (a flat picture: each PNG is small, its pixels
are many) in a loop, and a probe asks `/healthz` every 20 ms meanwhile; the report gives the
probe's p50/p99/max and what the heavy requests got back (status codes, latency).

    python -m bench.heavy_input [--clients 4] [--images 200] [--seconds 20]
                                [--request-pixels N]   # INFERENCE_MAX_REQUEST_PIXELS for the run

With the default per-request pixel budget the heavy request is refused (413) before any pixel
is decoded; `--request-pixels` large enough to accept it shows that decoding it, accepted, runs
off the event loop. Target: `/healthz` p99 under 50 ms in both.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from .common import Platform

HEALTHZ_TARGET_MS = 50.0


def heavy_body(images: int, side: int = 4096) -> bytes:
    """A predict body of `images` identical flat PNGs of side x side pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (side, side), color=128).save(buffer, format="PNG", optimize=True)
    png = base64.b64encode(buffer.getvalue()).decode()
    return json.dumps({"instances": [png] * images}).encode()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


ACCEPTED_PIXELS = 4_000_000_000  # a per-request budget that lets the heavy request through (`--request-pixels`)


@dataclass
class Outcome:
    healthz_ms: list[float] = field(default_factory=list)
    healthz_failures: int = 0
    heavy: dict[int, list[float]] = field(default_factory=dict)  # status -> latencies (ms)

    def line(self) -> str:
        h = self.healthz_ms
        heavy = "; ".join(f"{code}: {len(ms)} (p50 {statistics.median(ms):.0f} ms)" for code, ms in sorted(self.heavy.items()))
        return (f"/healthz p50 {percentile(h, 50):.1f} ms, p99 {percentile(h, 99):.1f} ms, max {max(h, default=float('nan')):.1f} ms "
                f"over {len(h)} probes ({self.healthz_failures} failed); heavy requests: {heavy or 'none answered'}")

    @property
    def passed(self) -> bool:
        return bool(self.healthz_ms) and not self.healthz_failures and percentile(self.healthz_ms, 99) < HEALTHZ_TARGET_MS


def heavy_client(url: str, key: str, body: bytes, stop: float, results) -> None:
    """One heavy client (its own process, so that the probe's timings share no GIL with it)."""
    seen: dict[int, list[float]] = {}
    while time.time() < stop:
        request = urllib.request.Request(f"{url}/api/v1/models/digits/predict", data=body, method="POST",
                                         headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.read()
            status = exc.code
        except OSError:
            status = 0
        seen.setdefault(status, []).append((time.perf_counter() - t0) * 1000)
    results.put(seen)


def measure(platform: Platform, key: str, *, clients: int, images: int, seconds: float) -> Outcome:
    import multiprocessing

    body = heavy_body(images)
    outcome = Outcome()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    stop = time.time() + seconds
    processes = [context.Process(target=heavy_client, args=(platform.url, key, body, stop, results), daemon=True)
                 for _ in range(clients)]
    for p in processes:
        p.start()
    time.sleep(1.0)  # the heavy requests are in flight
    while time.time() < stop:
        t0 = time.perf_counter()
        try:
            urllib.request.urlopen(f"{platform.url}/healthz", timeout=60).read()
            outcome.healthz_ms.append((time.perf_counter() - t0) * 1000)
        except OSError:
            outcome.healthz_failures += 1
        time.sleep(0.02)
    for _ in processes:
        for status, ms in results.get(timeout=180).items():
            outcome.heavy.setdefault(status, []).extend(ms)
    for p in processes:
        p.join(10)
    return outcome


def run(*, clients: int = 4, images: int = 200, seconds: float = 20.0, request_pixels: int | None = None,
        python: str | None = None) -> Outcome:
    from inference.demo import train_digits

    env = {} if request_pixels is None else {"INFERENCE_MAX_REQUEST_PIXELS": str(request_pixels)}
    platform = Platform(extra_env=env, **({"python": python} if python else {}))
    try:
        platform.setup()
        demo = train_digits()
        artifact = platform.data_dir / "digits.safetensors"
        artifact.write_bytes(demo.safetensors_bytes())
        platform.register("digits", artifact, demo.config)
        key = platform.create_key()
        platform.start()
        return measure(platform, key, clients=clients, images=images, seconds=seconds)
    finally:
        platform.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--request-pixels", type=int, default=None)
    args = parser.parse_args()
    outcome = run(clients=args.clients, images=args.images, seconds=args.seconds, request_pixels=args.request_pixels)
    print(f"{'PASS' if outcome.passed else 'FAIL'}: {outcome.line()} (target p99 < {HEALTHZ_TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
