"""The lesson's network, layer for layer (TensorFlow lesson "Python 12", Fig. 7).

    conv1 5x5x6 SAME -> pool1 2x2/2 -> relu1 -> conv2 5x5x16 SAME -> pool2 2x2/2 -> relu2
    -> flatten (7*7*16 = 784) -> fc1 128 -> relu3 -> fc2 10 (softmax lives in the loss)

Pooling comes before ReLU, as in the lesson (the two commute; pooling first is 4x cheaper).
Layer names match the lesson's variable scopes so `show` can name feature maps the same way.
"""
from __future__ import annotations

import torch
from torch import nn

from mnist_cnn.models.registry import register

# The lesson's initialisation: tf.truncated_normal(stddev=0.05), which redraws values beyond
# 2 standard deviations, and tf.constant(0.05) for every bias.
WEIGHT_STDDEV = 0.05
BIAS_VALUE = 0.05


def lesson_init_(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(layer.weight, std=WEIGHT_STDDEV, a=-2 * WEIGHT_STDDEV, b=2 * WEIGHT_STDDEV)
            nn.init.constant_(layer.bias, BIAS_VALUE)


@register("seed")
class SeedNet(nn.Sequential):
    """The lesson's LeNet-like CNN: conv 5x5x6, conv 5x5x16, FC 128, FC 10 (the `seed` and `default` presets).

    104,342 parameters: conv1 156 + conv2 2,416 + fc1 100,480 + fc2 1,290.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        # padding=2 is TensorFlow's SAME for a 5x5 kernel at stride 1: 28x28 stays 28x28.
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        # SAME max-pooling 2x2/2 pads nothing on even sizes: 28 -> 14 -> 7.
        self.pool1 = nn.MaxPool2d(2, 2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, padding=2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(7 * 7 * 16, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)
        lesson_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, 28, 28) -> (N, classes)
        return super().forward(x)
