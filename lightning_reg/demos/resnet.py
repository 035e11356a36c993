"""A ResNet written as torchvision writes it, for the structured-sparsity demos, benchmark and tests.

torchvision's PyPI wheels link against torch's CUDA build and do not import beside the CPU build, so
this module writes its ``resnet18`` here: the same ``BasicBlock`` (two 3x3 convolutions, BatchNorm, a
residual addition, a 1x1 convolution with BatchNorm as the downsample shortcut), the same stem, stages,
module names (``conv1``, ``bn1``, ``layer1.0.conv2``, ``layer2.0.downsample.0``, ``fc``) and
initialisation. ``width`` scales the channels (64 is torchvision's), and a small ``stem`` (a 3x3
convolution, no max pooling) suits small images such as 8x8 digits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "ResNet",
]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, and the input added back (through ``downsample`` if given)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + identity)
        return result


class ResNet(nn.Module):
    """torchvision's ``ResNet`` with ``BasicBlock`` s: a stem, four stages, global pooling, ``fc``.

    Args:
        layers: blocks per stage (``(2, 2, 2, 2)``: ResNet-18).
        num_classes: outputs of ``fc``.
        width: channels of the first stage; the others double it at each stage (64: torchvision's).
        in_channels: input channels.
        small_stem: a 3x3 stride-1 stem convolution without max pooling, for small images; else
            torchvision's 7x7 stride-2 convolution and 3x3 max pooling.

    >>> model = ResNet(num_classes=10)
    >>> sum(p.numel() for p in model.parameters())  # torchvision's resnet18(num_classes=10)
    11181642
    >>> model(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        width: int = 64,
        in_channels: int = 3,
        small_stem: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = width
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(width, layers[0])
        self.layer2 = self._stage(width * 2, layers[1], stride=2)
        self.layer3 = self._stage(width * 4, layers[2], stride=2)
        self.layer4 = self._stage(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _stage(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        stage = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        stage += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits: Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits
