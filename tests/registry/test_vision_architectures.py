"""The torchvision families of registry.architectures against torchvision itself.

torchvision does not import beside the pinned torch, so the reference is recorded:
tests/registry/vision_reference/make_reference.py wrote, with torchvision, each network's
state_dict entries and its outputs for deterministic weights (vision_reference/seeded.py, numpy
only) on a fixed input. Same keys in the same order, same shapes and dtypes, same parameters
and buffers, and the same logits within 1e-4 (relative to the largest logit where it is over 1)
mean that a state_dict saved from torchvision loads here with strict=True and computes the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings

import registry.architectures as architectures
from registry.artifacts import load_module, parameter_count
from tests.conftest import safetensors_bytes
from tests.registry.vision_reference.seeded import seeded_input, seeded_state_dict

REFERENCE = Path(__file__).parent / "vision_reference"
NAMES = sorted(architectures.TORCHVISION_NAMES)


def fixture(name: str) -> dict:
    ref = json.loads((REFERENCE / f"{architectures.TORCHVISION_NAMES[name]}.json").read_text())
    assert ref["architecture"] == name
    return ref


def entries(module: torch.nn.Module) -> list[list]:
    params = {n for n, _ in module.named_parameters()}
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch."), "parameter" if k in params else "buffer"]
            for k, v in module.state_dict().items()]


def seeded(module: torch.nn.Module) -> torch.nn.Module:
    weights = seeded_state_dict((k, shape, dtype) for k, shape, dtype, _ in entries(module))
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return module.eval()


def test_every_torchvision_family_is_allowlisted_and_has_a_reference():
    assert {f"registry.architectures.{n}" for n in NAMES} <= set(settings.INFERENCE_ARCHITECTURES)
    assert {p.stem for p in REFERENCE.glob("*.json")} == set(architectures.TORCHVISION_NAMES.values())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_torchvisions(name):
    ref = fixture(name)
    ours = entries(getattr(architectures, name)())
    assert [e[0] for e in ours] == [e[0] for e in ref["state_dict"]]  # the same keys, in the same order
    assert ours == ref["state_dict"]  # shapes, dtypes, parameters vs buffers


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_torchvisions_without_building(name):
    ref = fixture(name)
    cls = getattr(architectures, name)
    assert cls.parameter_count() == sum(np.prod(shape, dtype=np.int64) for _, shape, _, kind in ref["state_dict"]
                                        if kind == "parameter")
    assert cls.parameter_count(num_classes=10) == sum(p.numel() for p in cls(num_classes=10).parameters())
    # registry.artifacts counts it so (without running __init__) in the registering process
    assert parameter_count(f"registry.architectures.{name}", {"num_classes": 10}, build=False) == \
        cls.parameter_count(num_classes=10)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_torchvisions_for_the_same_weights(name):
    ref = fixture(name)["outputs"]
    torch.manual_seed(0)
    module = seeded(getattr(architectures, name)(num_classes=ref["num_classes"]))
    x = seeded_input(ref["input_seed"], tuple(ref["input_shape"]))
    with torch.inference_mode():
        logits = module(torch.from_numpy(x)).numpy()
    expected = np.array(ref["logits"], dtype=np.float32)
    assert logits.shape == expected.shape == (2, ref["num_classes"])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(expected).max())))
    assert np.abs(expected[0] - expected[1]).max() > 1e-2  # the two inputs are told apart: a real check


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_weights_load_through_the_real_loader(name):
    """A safetensors file of the state_dict (what safetensors.torch.save_file(tv_model.state_dict())
    writes) loads with the registry's loader, strict, and computes what the module it came from did."""
    source = seeded(getattr(architectures, name)(num_classes=5))
    module = load_module(safetensors_bytes(source), format="safetensors", architecture=f"registry.architectures.{name}",
                         architecture_args={"num_classes": 5})
    assert not module.training
    x = torch.from_numpy(seeded_input(3, (1, 3, 32, 32)))
    with torch.inference_mode():
        torch.testing.assert_close(module(x), source(x))


@pytest.mark.parametrize("args", [{"num_classes": 0}, {"num_classes": "10"}, {"num_classes": True}, {"classes": 10}])
def test_bad_architecture_args_are_refused_with_the_reason(args):
    from registry.artifacts import ArtifactError, build_architecture

    with pytest.raises(ArtifactError, match="num_classes|classes"):
        build_architecture("registry.architectures.ResNet18", args)
    with pytest.raises(ArtifactError, match="dropout"):
        build_architecture("registry.architectures.EfficientNetB0", {"dropout": 2})
