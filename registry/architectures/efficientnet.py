"""EfficientNet-B0 (Tan and Le, 2019) as torchvision.models.efficientnet builds it.

Keys: ``features.0`` (the stem), ``features.1`` ... ``features.7`` (one ``nn.Sequential`` of
MBConv blocks per stage: ``features.2.0.block.0.0.weight`` ..., ``.block.N.fc1`` for the
squeeze-excitation), ``features.8`` (the last 1x1 convolution) and ``classifier.1``
(Dropout, Linear).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .layers import Conv2dNormActivation, SqueezeExcitation, check_dropout, check_num_classes, make_divisible


class Stage(NamedTuple):
    """One stage of MBConv blocks: expansion ratio, kernel, stride of its first block, channels in
    and out, number of blocks."""

    expand_ratio: int
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int


B0 = [
    Stage(1, 3, 1, 32, 16, 1),
    Stage(6, 3, 2, 16, 24, 2),
    Stage(6, 5, 2, 24, 40, 2),
    Stage(6, 3, 2, 40, 80, 3),
    Stage(6, 5, 1, 80, 112, 3),
    Stage(6, 5, 2, 112, 192, 4),
    Stage(6, 3, 1, 192, 320, 1),
]


class MBConv(nn.Module):
    """1x1 expand (ratio > 1), depthwise kxk, squeeze-excitation (SiLU, sigmoid), 1x1 project; the
    input added back where the shape is kept. torchvision's stochastic depth is the identity at
    inference, and holds no weights: it is left out."""

    def __init__(self, expand_ratio: int, kernel: int, stride: int, input_channels: int, out_channels: int):
        super().__init__()
        self.use_res_connect = stride == 1 and input_channels == out_channels
        expanded = make_divisible(input_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != input_channels:
            layers.append(Conv2dNormActivation(input_channels, expanded, kernel_size=1, activation_layer=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel_size=kernel, stride=stride, groups=expanded,
                                           activation_layer=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, input_channels // 4), activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded, out_channels, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


# Parameters without the Linear head (torchvision's count at 1000 classes minus 1000 * 1281);
# tests/registry/test_vision_architectures.py checks it.
B0_TRUNK = 4_007_548


class EfficientNetB0(nn.Module):
    """torchvision.models.efficientnet_b0(num_classes=..., dropout=...): 5.3 M parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        num_classes, dropout = check_num_classes(num_classes), check_dropout(dropout)
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, B0[0].input_channels, kernel_size=3, stride=2, activation_layer=nn.SiLU)
        ]
        for stage in B0:
            blocks = [
                MBConv(stage.expand_ratio, stage.kernel, stage.stride if i == 0 else 1,
                       stage.input_channels if i == 0 else stage.out_channels, stage.out_channels)
                for i in range(stage.num_layers)
            ]
            layers.append(nn.Sequential(*blocks))
        last_input = B0[-1].out_channels
        layers.append(Conv2dNormActivation(last_input, 4 * last_input, kernel_size=1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(4 * last_input, num_classes))
        for m in self.modules():  # torchvision's initialisation, for modules built without weights
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init_range = 1.0 / m.out_features**0.5
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    @staticmethod
    def parameter_count(num_classes: int = 1000, dropout: float = 0.2) -> int:
        check_dropout(dropout)
        return B0_TRUNK + 1281 * check_num_classes(num_classes)
