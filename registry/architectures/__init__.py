"""Architectures shipped in the allowlist (settings.INFERENCE_ARCHITECTURES).

* Generic: ``MLP`` and ``SmallCNN`` (generic.py).
* The torchvision classification families, for weights trained with torchvision:
  ``ResNet18``, ``ResNet34``, ``ResNet50`` (resnet.py), ``MobileNetV3Small``,
  ``MobileNetV3Large`` (mobilenet.py) and ``EfficientNetB0`` (efficientnet.py), each built as
  ``torchvision.models.<name>(num_classes=...)`` builds it.

The torchvision families are written here rather than imported because torchvision cannot
be installed beside the torch this project pins: a torchvision wheel is built against one
torch release, and PyPI's current one fails to import with torch 2.13.0 ("operator
torchvision::nms does not exist"). They keep torchvision's module tree, so their state-dict
keys, shapes and forward pass are torchvision's, and ``model.state_dict()`` saved from
torchvision (``safetensors.torch.save_file``) loads into them with ``strict=True``. A
conformance test guards this: tests/registry/test_vision_architectures.py compares keys,
shapes and outputs with fixtures that tests/registry/vision_reference/make_reference.py
wrote from torchvision itself. Only inference is in scope: training-time details with no
weights and no effect in eval mode (stochastic depth) are left out.

Each class has a ``parameter_count(**architecture_args)`` that computes, without
allocating anything, how many parameters the module would hold (INFERENCE_MAX_PARAMETERS
is checked against it before the module is built); architectures without one are counted
built on the ``meta`` device (registry.artifacts.parameter_count).
"""

from .efficientnet import EfficientNetB0
from .generic import MLP, SmallCNN
from .mobilenet import MobileNetV3Large, MobileNetV3Small
from .resnet import ResNet18, ResNet34, ResNet50

__all__ = [
    "MLP",
    "SmallCNN",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "MobileNetV3Small",
    "MobileNetV3Large",
    "EfficientNetB0",
]

# The torchvision builder each class matches (the conformance test and the docs use it).
TORCHVISION_NAMES = {
    "ResNet18": "resnet18",
    "ResNet34": "resnet34",
    "ResNet50": "resnet50",
    "MobileNetV3Small": "mobilenet_v3_small",
    "MobileNetV3Large": "mobilenet_v3_large",
    "EfficientNetB0": "efficientnet_b0",
}
