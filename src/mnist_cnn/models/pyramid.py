"""`pyramid`: a residual network that doubles the channels at every block while the map halves,
from 28x28 down to 2x2, so it spends few multiply-adds at 28x28 and most of its parameters at
7x7 and below (issue 23). The layout is fast.ai's Fashion-MNIST ResNet (course22p2, notebook
14_augment, channels 16..512), at half its width by default:

    28x28: block 1 -> w, 5x5 convs -> four blocks, each doubling the channels, the second conv
    strided: 14x14 (2w), 7x7 (4w), 4x4 (8w), 2x2 (16w) -> one more block 16w -> 32w at 2x2
    -> global average pool -> fc classes

fast.ai's last block halves 2x2 to 1x1 instead; there batch norm sees one value per channel for
a batch of one image, which training refuses (a run's last batch can hold one image), so the
last block keeps the 2x2 map.

A block is conv-BN-ReLU-conv-BN plus its input (average-pooled where the map halves, through a
1x1 conv-BN where the width changes), then ReLU. Default width 8: 1.23 M parameters, ~11 M
multiply-adds per image forward, against the width-24 `resnet`'s 0.17 M and ~21 M
(docs/accuracy.md has the step times).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn.models.layers import conv_bn
from mnist_cnn.models.registry import register

BLOCKS = 6  # at 28, 14, 7, 4, 2 and 2 px


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn(c_in, c_out, kernel), conv_bn(c_out, c_out, kernel, stride, relu=False))
        # ceil_mode: 7 px pool to 4, as the strided conv's padding does.
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if stride > 1 else nn.Identity()
        self.project = conv_bn(c_in, c_out, 1, relu=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs(x) + self.project(self.pool(x)))


@register("pyramid")
class Pyramid(nn.Sequential):
    """Residual net doubling the channels at each block while the map halves (w at 28 px .. 32w at 2 px)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8) -> None:
        channels = [width * 2 ** block for block in range(BLOCKS)]
        layers: list[nn.Module] = [Block(in_channels, channels[0], kernel=5)]
        layers += [Block(c_in, c_out, stride=1 if c_out == channels[-1] else 2)
                   for c_in, c_out in zip(channels, channels[1:])]
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, 28, 28) -> (N, classes)
        return super().forward(x)
