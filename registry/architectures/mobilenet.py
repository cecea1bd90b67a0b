"""MobileNetV3 (Howard et al., 2019) as torchvision.models.mobilenetv3 builds it: small and large.

Keys: ``features.0`` (the stem, a Conv2dNormActivation: ``features.0.0.weight``,
``features.0.1.running_var`` ...), ``features.N.block.M`` for the inverted residual blocks
(``.fc1``/``.fc2`` where a block has squeeze-excitation), the last 1x1 convolution, and
``classifier.0`` / ``classifier.3`` (Linear, Hardswish, Dropout, Linear).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .layers import Conv2dNormActivation, SqueezeExcitation, check_dropout, check_num_classes, make_divisible

# BatchNorm as the paper's TensorFlow code has it; the eps changes the outputs, so it must be this.
NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class Bneck(NamedTuple):
    """One inverted residual block: channels in, kernel, expanded, out, squeeze-excitation,
    hard-swish (else ReLU), stride."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int


class InvertedResidual(nn.Module):
    """1x1 expand (when the width changes), depthwise kxk, squeeze-excitation, 1x1 project; the
    input added back where the shape is kept."""

    def __init__(self, cnf: Bneck):
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels, kernel_size=1,
                                               norm_layer=NORM, activation_layer=activation))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels, kernel_size=cnf.kernel,
                                           stride=cnf.stride, groups=cnf.expanded_channels, norm_layer=NORM,
                                           activation_layer=activation))
        if cnf.use_se:
            squeeze = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze, scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, kernel_size=1, norm_layer=NORM,
                                           activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


class MobileNetV3(nn.Module):
    """The MobileNetV3 trunk for a block setting and the width of its penultimate layer."""

    def __init__(self, setting: list[Bneck], last_channel: int, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        num_classes, dropout = check_num_classes(num_classes), check_dropout(dropout)
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, setting[0].input_channels, kernel_size=3, stride=2, norm_layer=NORM,
                                 activation_layer=nn.Hardswish)
        ]
        layers += [InvertedResidual(cnf) for cnf in setting]
        lastconv_input = setting[-1].out_channels
        lastconv_output = 6 * lastconv_input
        layers.append(Conv2dNormActivation(lastconv_input, lastconv_output, kernel_size=1, norm_layer=NORM,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(lastconv_output, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        for m in self.modules():  # torchvision's initialisation, for modules built without weights
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


RE, HS = False, True

LARGE = [
    Bneck(16, 3, 16, 16, False, RE, 1),
    Bneck(16, 3, 64, 24, False, RE, 2),
    Bneck(24, 3, 72, 24, False, RE, 1),
    Bneck(24, 5, 72, 40, True, RE, 2),
    Bneck(40, 5, 120, 40, True, RE, 1),
    Bneck(40, 5, 120, 40, True, RE, 1),
    Bneck(40, 3, 240, 80, False, HS, 2),
    Bneck(80, 3, 200, 80, False, HS, 1),
    Bneck(80, 3, 184, 80, False, HS, 1),
    Bneck(80, 3, 184, 80, False, HS, 1),
    Bneck(80, 3, 480, 112, True, HS, 1),
    Bneck(112, 3, 672, 112, True, HS, 1),
    Bneck(112, 5, 672, 160, True, HS, 2),
    Bneck(160, 5, 960, 160, True, HS, 1),
    Bneck(160, 5, 960, 160, True, HS, 1),
]

SMALL = [
    Bneck(16, 3, 16, 16, True, RE, 2),
    Bneck(16, 3, 72, 24, False, RE, 2),
    Bneck(24, 3, 88, 24, False, RE, 1),
    Bneck(24, 5, 96, 40, True, HS, 2),
    Bneck(40, 5, 240, 40, True, HS, 1),
    Bneck(40, 5, 240, 40, True, HS, 1),
    Bneck(40, 5, 120, 48, True, HS, 1),
    Bneck(48, 5, 144, 48, True, HS, 1),
    Bneck(48, 5, 288, 96, True, HS, 2),
    Bneck(96, 5, 576, 96, True, HS, 1),
    Bneck(96, 5, 576, 96, True, HS, 1),
]

# Parameters without the last Linear (torchvision's count at 1000 classes minus its 1000 * (in + 1));
# tests/registry/test_vision_architectures.py checks them.
SMALL_TRUNK, LARGE_TRUNK = 1_517_856, 4_202_032


class MobileNetV3Small(MobileNetV3):
    """torchvision.models.mobilenet_v3_small(num_classes=..., dropout=...): 2.5 M parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__(SMALL, 1024, num_classes, dropout)

    @staticmethod
    def parameter_count(num_classes: int = 1000, dropout: float = 0.2) -> int:
        check_dropout(dropout)
        return SMALL_TRUNK + 1025 * check_num_classes(num_classes)


class MobileNetV3Large(MobileNetV3):
    """torchvision.models.mobilenet_v3_large(num_classes=..., dropout=...): 5.5 M parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__(LARGE, 1280, num_classes, dropout)

    @staticmethod
    def parameter_count(num_classes: int = 1000, dropout: float = 0.2) -> int:
        check_dropout(dropout)
        return LARGE_TRUNK + 1281 * check_num_classes(num_classes)
