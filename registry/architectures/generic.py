"""The generic architectures: MLP and SmallCNN.

Both are plain ``nn.Sequential`` subclasses, so their state-dict keys (``0.weight``,
``0.bias``, ``2.weight`` ...) are those of an ``nn.Sequential`` built the same way
elsewhere, and weights trained outside the platform load as they are.

Each has a ``parameter_count(**architecture_args)`` that computes, without allocating
anything, how many parameters the module would hold (INFERENCE_MAX_PARAMETERS is checked
against it before the module is built); architectures without one are counted built on
the ``meta`` device (registry.artifacts.parameter_count).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Linear layers with ReLU between them: in_features -> *hidden -> out_features."""

    def __init__(self, in_features: int, hidden: Sequence[int] | int = (), out_features: int = 1):
        sizes = self.sizes(in_features, hidden, out_features)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(a, b))
        super().__init__(*layers)

    @staticmethod
    def sizes(in_features: int, hidden: Sequence[int] | int = (), out_features: int = 1) -> list[int]:
        if isinstance(hidden, int):
            hidden = [hidden]
        sizes = [int(in_features), *[int(h) for h in hidden], int(out_features)]
        if any(s < 1 for s in sizes):
            raise ValueError(f"MLP layer sizes must be positive, got {sizes[:10]}")
        return sizes

    @staticmethod
    def parameter_count(in_features: int, hidden: Sequence[int] | int = (), out_features: int = 1) -> int:
        sizes = MLP.sizes(in_features, hidden, out_features)
        return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


class SmallCNN(nn.Sequential):
    """A small image classifier: [conv3x3 -> ReLU -> maxpool2] per channel count, then a linear head.

    Input (batch, in_channels, image_size, image_size); output (batch, num_classes) logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 8,
        channels: Sequence[int] = (16, 32),
    ):
        layers: list[nn.Module] = []
        size = int(image_size)
        prev = int(in_channels)
        for c in channels:
            layers += [nn.Conv2d(prev, int(c), kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            prev = int(c)
            size //= 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(channels)} pooling stages")
        layers += [nn.Flatten(), nn.Linear(prev * size * size, int(num_classes))]
        super().__init__(*layers)

    @staticmethod
    def parameter_count(
        in_channels: int = 1, num_classes: int = 10, image_size: int = 8, channels: Sequence[int] = (16, 32)
    ) -> int:
        count, size, prev = 0, int(image_size), int(in_channels)
        for c in channels:
            count += prev * int(c) * 9 + int(c)  # 3x3 kernels and a bias per output channel
            prev = int(c)
            size //= 2
        return count + prev * size * size * int(num_classes) + int(num_classes)
