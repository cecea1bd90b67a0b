"""Write the conformance fixtures of registry.architectures' torchvision families, from torchvision.

Run only where torchvision is installed: not in the project's venv (torchvision's wheels are
built against one torch release and do not import beside the pinned torch 2.13.0), but in a
venv of its own, e.g.

    python3.11 -m venv /tmp/tv-venv
    /tmp/tv-venv/bin/pip install torch torchvision safetensors numpy
    /tmp/tv-venv/bin/python tests/registry/vision_reference/make_reference.py

For each architecture it writes <torchvision builder>.json beside this file:

* "state_dict": [key, shape, dtype, "parameter" | "buffer"] of torchvision.models.<builder>()
  (1000 classes), in state_dict order;
* "outputs": the logits of torchvision.models.<builder>(num_classes=10) in eval mode, its
  weights seeded.seeded_state_dict() (numpy, the same under any torch), on seeded.seeded_input().

tests/registry/test_vision_architectures.py checks the project's modules against them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torchvision

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

sys.path.insert(0, str(HERE.parents[2]))  # the project root: its architectures import torch only

from seeded import INPUT_SHAPE, seeded_input, seeded_state_dict  # noqa: E402

from registry.architectures import TORCHVISION_NAMES  # noqa: E402

ARCHITECTURES = TORCHVISION_NAMES  # project class -> torchvision builder
NUM_CLASSES = 10  # the outputs' head: a small fixture


def entries(model: torch.nn.Module) -> list[list]:
    params = {name for name, _ in model.named_parameters()}
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch."), "parameter" if k in params else "buffer"]
            for k, v in model.state_dict().items()]


def reference(builder: str) -> dict:
    build = getattr(torchvision.models, builder)
    full = entries(build())
    model = build(num_classes=NUM_CLASSES)
    weights = seeded_state_dict((k, shape, dtype) for k, shape, dtype, _ in entries(model))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(seeded_input())).numpy()
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "builder": builder,
        "state_dict": full,
        "outputs": {"num_classes": NUM_CLASSES, "weights_seed": 0, "input_seed": 1, "input_shape": list(INPUT_SHAPE),
                    "logits": [[float(f"{x:.7g}") for x in row] for row in logits.tolist()]},
    }


def main() -> None:
    torch.set_num_threads(2)
    for name, builder in ARCHITECTURES.items():
        ref = reference(builder)
        path = HERE / f"{builder}.json"
        path.write_text(json.dumps({"architecture": name, **ref}, separators=(",", ":")) + "\n")
        logits = ref["outputs"]["logits"]
        print(f"{name}: {len(ref['state_dict'])} entries, logits {min(map(min, logits)):.3g}..{max(map(max, logits)):.3g}"
              f" -> {path.name} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
