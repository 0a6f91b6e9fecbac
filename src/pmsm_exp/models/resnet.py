"""ResNet-20 for 32x32 inputs (widths 16/32/64, 3 blocks per stage).

The activation follows the residual add, so in the SNN the add happens on
currents and the neuron after it sees the sum, as in the quantized ANN.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from pmsm_exp.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, activation: Callable[[], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = activation()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.act2 = activation()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, widths, num_classes: int, activation: Callable[[], nn.Module],
                 in_channels: int = 3, zero_init_residual: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), activation())
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1, activation))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_planes, num_classes)
        if zero_init_residual:  # each block starts as its shortcut (Goyal et al. 2017): faster early training
            for block in self.modules():
                if isinstance(block, BasicBlock):
                    nn.init.zeros_(block.bn2.weight)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))))


@register_model
def resnet20(num_classes: int = 10, activation: Callable[[], nn.Module] = nn.ReLU, **kwargs) -> CifarResNet:
    return CifarResNet(3, (16, 32, 64), num_classes, activation, **kwargs)
