"""The ResNet-18 row of `make bench`: images through torchvision's preprocessing, served by the platform.

A ResNet-18 (registry.architectures.ResNet18, 1000 classes, weights from seed 0) with the
pipeline of torchvision's ImageNet weights: ``image`` (decode) -> ``resize`` 256 ->
``center_crop`` 224 -> ``normalize`` ImageNet -> model -> softmax -> top 5. Each request
carries one 224x224 JPEG (a smooth picture, quality 90), base64-encoded as the image step takes
it; with one image per request, requests/s is images/s. It is a row of bench.large_input, on a
platform of its own (the reference servers serve only the MLP and iris):

    python -m bench.large_input --models resnet18
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

MODEL = "resnet18"
IMAGE_SIDE = 224

CONFIG = {
    "format": "safetensors",
    "architecture": "registry.architectures.ResNet18",
    "architecture_args": {"num_classes": 1000},
    "inputs": [{"name": "image", "datatype": "FP32", "shape": [3, 224, 224]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1000]}],
    "preprocess": [{"step": "image", "mode": "RGB"}, {"step": "resize", "size": 256},
                   {"step": "center_crop", "size": 224}, {"step": "normalize", "preset": "imagenet"}],
    "postprocess": [{"step": "softmax"}, {"step": "topk", "k": 5}],
    "batching": {"max_batch_size": 8, "max_batch_delay_ms": 5, "max_queue_size": 256},
    "hardware": "cpu",
}


def artifacts(workdir: Path) -> tuple[Path, dict]:
    """Write the seeded ResNet-18 as safetensors; return (path, config)."""
    import torch
    from safetensors.torch import save_file

    from registry.architectures import ResNet18

    torch.manual_seed(0)
    path = workdir / "resnet18.safetensors"
    save_file(ResNet18().state_dict(), str(path))
    return path, dict(CONFIG)


def images(n: int, seed: int = 0) -> list[str]:
    """`n` base64 JPEGs of 224x224 pixels: smooth pictures (an 8x8 random one, enlarged)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out
