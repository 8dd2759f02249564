"""Tiny learnable stand-ins for MNIST, for fast tests: class k is a bright bar at rows 2k..2k+5,
jittered sideways, plus noise. Any working CNN separates them in a few dozen steps."""
from __future__ import annotations

import torch

from mnist_cnn.data import Dataset, Split


def toy_split(n: int, seed: int, num_classes: int = 10) -> Split:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    shifts = torch.randint(0, 8, (n,), generator=g)
    for i in range(n):
        row, col = 2 * int(labels[i]) + 2, int(shifts[i]) + 2
        images[i, 0, row:row + 5, col:col + 14] = 255
    return Split(images, labels)


def toy_dataset(n_train: int = 600, n_validation: int = 100, n_test: int = 100) -> Dataset:
    return Dataset(name="toy", class_names=tuple(str(i) for i in range(10)), train=toy_split(n_train, 1),
                   validation=toy_split(n_validation, 2), test=toy_split(n_test, 3), source="synthetic")
