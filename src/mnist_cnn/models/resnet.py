"""`resnet`: a small pre-activation residual network for 28x28 inputs (He et al. 2016, "Identity
mappings in deep residual networks"; widths as in Zagoruyko and Komodakis's wide ResNets).

    stem conv3x3 w -> stage 28x28: depth blocks of w -> stage 14x14: depth blocks of 2w
    -> stage 7x7: depth blocks of 4w -> BN, ReLU -> global average pool -> fc classes

A block is BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus its input (a 1x1 conv shortcut where the size or
width changes): 6 * depth + 2 weight layers. Every 3x3 conv costs about the same, 28*28*9*w^2
multiply-adds, since halving the map doubles the width. Defaults (depth 1, width 32): 307,690
parameters, ~37 M multiply-adds per image forward, 2.9x the `best` network (see docs/accuracy.md
for step times).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn.models.registry import register


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # No bias: a BatchNorm follows every conv (in the next block or the head).
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
        same = stride == 1 and c_in == c_out
        self.shortcut = None if same else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in the paper's reference code.
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


@register("resnet")
class PreActResNet(nn.Sequential):
    """Pre-activation ResNet, 3 stages (28, 14, 7 px) of `depth` blocks, widths w, 2w, 4w."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, depth: int = 1, width: int = 32) -> None:
        layers: list[nn.Module] = [conv3x3(in_channels, width)]
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(PreActBlock(c_in, c_out, stride))
                c_in = c_out
        layers += [nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(c_in, num_classes)]
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, 28, 28) -> (N, classes)
        return super().forward(x)
