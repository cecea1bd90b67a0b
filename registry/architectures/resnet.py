"""ResNet (He et al., 2015) as torchvision.models.resnet builds it: ResNet-18, -34 and -50.

Keys: ``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer4.1.bn2`` (``layer4.2.bn3`` for the
bottleneck ResNet-50), ``layerN.0.downsample.0/1`` where a block changes shape, ``fc``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import check_num_classes


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and the identity (or a 1x1 downsample) added: ResNet-18/34."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (the stride here, as torchvision's "ResNet V1.5"), 1x1 expand by 4: ResNet-50."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """The ResNet trunk: a 7x7 stem, max-pool, four stages of blocks, global average pool, `fc`."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000):
        super().__init__()
        num_classes = check_num_classes(num_classes)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation, for modules built without weights
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# Parameters of each network without its `fc` head (torchvision's count at 1000 classes minus
# 1000 * (in_features + 1)); tests/registry/test_vision_architectures.py checks them.
RESNET18_TRUNK, RESNET34_TRUNK, RESNET50_TRUNK = 11_176_512, 21_284_672, 23_508_032


class ResNet18(ResNet):
    """torchvision.models.resnet18(num_classes=...): 11.7 M parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes)

    @staticmethod
    def parameter_count(num_classes: int = 1000) -> int:
        return RESNET18_TRUNK + 513 * check_num_classes(num_classes)


class ResNet34(ResNet):
    """torchvision.models.resnet34(num_classes=...): 21.8 M parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(BasicBlock, [3, 4, 6, 3], num_classes)

    @staticmethod
    def parameter_count(num_classes: int = 1000) -> int:
        return RESNET34_TRUNK + 513 * check_num_classes(num_classes)


class ResNet50(ResNet):
    """torchvision.models.resnet50(num_classes=...): 25.6 M parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes)

    @staticmethod
    def parameter_count(num_classes: int = 1000) -> int:
        return RESNET50_TRUNK + 2049 * check_num_classes(num_classes)
