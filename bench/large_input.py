"""Large inputs: requests whose decoding and pre-processing cost as much as the forward pass.

The side-by-side rows send one small instance per request; here each request carries many images,
so the figures include base64 and PNG decoding and the image pipeline, not only the model:

* ``digits``: the digits demo (SmallCNN, 8x8 greyscale PNGs through its ``image`` step), 64
  distinct held-out digits per request, 8 connections.
* ``resnet18``: a ResNet-18 (1000 classes, seeded weights) with torchvision's ImageNet
  pre-processing as declarative steps (decode, resize 256, center crop 224, normalize), one
  224x224 JPEG per request, 8 connections (bench.vision).

Each row runs on one platform (the platform alone on the machine), in alternating rounds when
there are several rows; the report gives images/s, requests/s, p50 and p99 (medians of rounds).

    python -m bench.large_input [--seconds 8] [--rounds 3]

`make bench` runs it after the side-by-side table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .common import PY, ROOT, Platform, WrkResult, run_wrk


@dataclass(frozen=True)
class Row:
    """One model at one load: what it registers and what each request sends."""

    model: str
    images: int  # instances (images) per request
    connections: int
    setup: Callable[[Path], tuple[Path, dict, str]]  # data dir -> (artifact, config, request body)
    what: str


def digits(data_dir: Path, images: int = 64) -> tuple[Path, dict, str]:
    from inference.demo import digit_png_base64, digits_split, train_digits

    demo = train_digits()
    artifact = data_dir / "digits.safetensors"
    artifact.write_bytes(demo.safetensors_bytes())
    _, _, held_out, _ = digits_split()
    body = json.dumps({"instances": [digit_png_base64(image) for image in held_out[:images]]})
    return artifact, demo.config, body


def resnet18(data_dir: Path) -> tuple[Path, dict, str]:
    from . import vision

    artifact, config = vision.artifacts(data_dir)
    return artifact, config, json.dumps({"instances": vision.images(1)})


ROWS = [
    Row("digits", 64, 8, digits, "digits demo (SmallCNN), 64 base64 8x8 PNGs per request"),
    Row("resnet18", 1, 8, resnet18, "ResNet-18 with torchvision's ImageNet pre-processing, one base64 224x224 JPEG "
        "per request, max_batch_size 8, one intra-op thread per batcher"),
]


@dataclass
class LargeInputRows:
    results: dict[str, list[WrkResult]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def table(self) -> list[str]:
        lines = ["| model | images/req | conc. | images/s | req/s | p50 ms | p99 ms | non-2xx |",
                 "|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            rs = self.results.get(row.model)
            if not rs:
                continue
            rps = statistics.median(r.rps for r in rs)
            lines.append(f"| {row.model} | {row.images} | {row.connections} | {rps * row.images:.0f} | {rps:.1f} | "
                         f"{statistics.median(r.p50_ms for r in rs):.2f} | "
                         f"{statistics.median(r.p99_ms for r in rs):.2f} | {sum(r.non_2xx for r in rs)} |")
        return lines

    def report(self) -> list[str]:
        return ["; ".join(f"{row.model}: {row.what}" for row in self.rows) + ".", "", *self.table()]


def run(*, python: str = PY, seconds: int = 8, rounds: int = 3, rows: list[Row] | None = None) -> LargeInputRows:
    rows = rows if rows is not None else ROWS
    out = LargeInputRows(rows=list(rows))
    platform = Platform(python=python)
    try:
        platform.setup()
        bodies = {}
        for row in rows:
            artifact, config, body = row.setup(platform.data_dir)
            platform.register(row.model, artifact, config)
            bodies[row.model] = body
        key = platform.create_key(rate="10000000/s")
        platform.start()
        headers = {"Authorization": f"Api-Key {key}"}
        for row in rows:  # warm-up: every web process
            run_wrk(f"{platform.url}/api/v1/models/{row.model}/predict", bodies[row.model], headers,
                    connections=row.connections, seconds=2)
        for _ in range(rounds):
            for row in rows:
                r = run_wrk(f"{platform.url}/api/v1/models/{row.model}/predict", bodies[row.model], headers,
                            connections=row.connections, seconds=seconds)
                out.results.setdefault(row.model, []).append(r)
                print(f"{row.model:8s} {row.images} images/req c={row.connections}: {r.rps * row.images:8.0f} images/s "
                      f"{r.rps:7.1f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  non-2xx {r.codes()} "
                      f"{r.errors}", flush=True)
    finally:
        platform.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="", help="comma list of rows (default: all): " + ",".join(r.model for r in ROWS))
    args = ap.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    wanted = set(args.models.split(",")) if args.models else None
    rows = [r for r in ROWS if wanted is None or r.model in wanted]
    print("\n".join(run(seconds=args.seconds, rounds=args.rounds, rows=rows).report()))


if __name__ == "__main__":
    main()
