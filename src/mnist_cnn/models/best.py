"""`best`: a compact VGG-style CNN with batch norm, for the `best` recipe (augmentation, label
smoothing, EMA weights; see config.PRESETS["best"]).

    28x28: conv5x5 w -> maxpool -> 14x14: conv 2w, conv 2w -> maxpool
    -> 7x7: conv 4w, conv 4w -> global average pool -> dropout -> fc classes      (w = 24)

Every conv is followed by BatchNorm + ReLU; BN lets the recipe use a high learning rate and makes
the result insensitive to the exact init. Pooling right after the first conv keeps the costly
3x3 convs at 14x14 and 7x7: 157,714 parameters and ~13 M multiply-adds per image forward
(the seed net: 104k and ~0.7 M), which is what a 2-core CPU can afford for ~20 epochs.
"""
from __future__ import annotations

import torch
from torch import nn

from mnist_cnn.models.layers import conv_bn
from mnist_cnn.models.registry import register


@register("best")
class BestNet(nn.Sequential):
    """Compact VGG-style CNN with batch norm, 5 convs of 24-96 channels (the `best` preset network)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 24, dropout: float = 0.1) -> None:
        w = width
        super().__init__(
            conv_bn(in_channels, w, 5), nn.MaxPool2d(2),                   # 28 -> 14
            conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),     # 14 -> 7
            conv_bn(2 * w, 4 * w), conv_bn(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),                         # (N, 4w)
            nn.Dropout(dropout), nn.Linear(4 * w, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, 28, 28) -> (N, classes)
        return super().forward(x)
