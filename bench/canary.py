"""The issue's measure of weighted aliases: how close a 90/10 split's traffic lands to its weights.

Picks through the routing function every request uses (``inference.routing.Route.pick``, what
``selectors.serving_version`` calls on the memoized split of an alias), without HTTP: 10,000
picks at random (requests without X-Routing-Key) and 10,000 distinct routing keys (sticky), and
how long one pick takes. Results are recorded by hand in docs/registry.md ("Canary releases").

    python -m bench.canary [--picks 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from types import SimpleNamespace

from inference.routing import Route


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    v3, v4 = SimpleNamespace(pk=3, version=3), SimpleNamespace(pk=4, version=4)
    route = Route([(v3, 90), (v4, 10)])
    n = args.picks
    for run in range(args.runs):
        counts = Counter(route.pick().version for _ in range(n))
        print(f"random run {run + 1}: v3 {counts[3] / n:.2%}  v4 {counts[4] / n:.2%}  "
              f"(error {abs(counts[4] / n - 0.10):.2%}; +-1 % {'met' if abs(counts[4] / n - 0.10) <= 0.01 else 'MISSED'})")
    sticky = Counter(route.pick(f"user-{i}").version for i in range(n))
    print(f"sticky, {n} distinct keys: v3 {sticky[3] / n:.2%}  v4 {sticky[4] / n:.2%}")
    t0 = time.perf_counter()
    for _ in range(n):
        route.pick()
    random_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for i in range(n):
        route.pick(f"user-{i}")
    sticky_us = (time.perf_counter() - t0) / n * 1e6
    print(f"one pick: {random_us:.2f} us at random, {sticky_us:.2f} us by routing key")


if __name__ == "__main__":
    main()
