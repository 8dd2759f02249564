"""Building blocks that several networks share."""
from __future__ import annotations

from torch import nn


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv, BatchNorm and (unless `relu` is False) ReLU. No conv bias: BN's shift replaces it;
    padding = kernel // 2 keeps the size (SAME) at stride 1."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)
