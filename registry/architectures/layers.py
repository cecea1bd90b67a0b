"""Building blocks of the torchvision families, as torchvision.ops.misc defines them.

``Conv2dNormActivation`` is an ``nn.Sequential`` of (conv, norm, activation), so its keys are
``0.weight``, ``1.weight``, ``1.running_mean`` ...; ``SqueezeExcitation`` names its
convolutions ``fc1`` and ``fc2``. Both keep torchvision's names and defaults exactly: the
state-dict keys of the families built from them depend on it (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10 % down
    (torchvision.models._utils._make_divisible, from the TensorFlow MobileNet code)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """Conv2d -> norm -> activation; padding keeps the size at stride 1; no conv bias under a norm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
        dilation: int = 1,
    ):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups,
                      bias=norm_layer is None)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Channel attention: x * scale_activation(fc2(activation(fc1(mean over H, W of x))))."""

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: Callable[..., nn.Module] = nn.ReLU,
        scale_activation: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, input: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(input))))
        return self.scale_activation(scale) * input


def check_num_classes(num_classes: object) -> int:
    """Return num_classes as an int, refusing anything but a positive integer."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def check_dropout(dropout: object) -> float:
    """Return the dropout probability (no effect at inference; accepted as torchvision accepts it)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout must be a number from 0 to 1, got {dropout!r}")
    return float(dropout)
