"""Data sets and image batches from a user's own arrays (numpy or torch), in the data layer's
types: uint8 images (N, 1, 28, 28) and int64 labels (N,)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mnist_cnn.data.dataset import Dataset, Split
from mnist_cnn.errors import UsageError


def dataset_from_arrays(train_images: np.ndarray, train_labels: Sequence[int], test_images: np.ndarray | None = None,
                        test_labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                        validation_size: int = 0, name: str = "arrays") -> Dataset:
    """A Dataset from your own arrays: images (N, 28, 28) or (N, 1, 28, 28) uint8 (or float 0..1),
    labels (N,) ints. Validation is the first `validation_size` training images; without test
    arrays the validation split doubles as the test split. Class names default to "0", "1", ...
    (Examples: mnist_cnn.dataset_from_arrays.)"""
    train_x, train_y = as_images_u8(train_images), as_labels(train_labels, len(train_images))
    if not 0 <= validation_size < len(train_y):
        raise UsageError(f"validation_size must be in 0..{len(train_y) - 1}, not {validation_size}")
    n_classes = int(train_y.max()) + 1 if len(train_y) else 0
    names = tuple(class_names) if class_names is not None else tuple(str(k) for k in range(max(n_classes, 1)))
    if n_classes > len(names):
        raise UsageError(f"labels go up to {n_classes - 1} but only {len(names)} class names were given")
    validation = Split(train_x[:validation_size], train_y[:validation_size])
    if test_images is None:
        test = validation
    else:
        test = Split(as_images_u8(test_images), as_labels(test_labels if test_labels is not None else [], len(test_images)))
    return Dataset(name, names, Split(train_x[validation_size:], train_y[validation_size:]), validation, test,
                   source="arrays given in Python")


def as_images_u8(images: Any) -> torch.Tensor:
    """(N, 28, 28) or (N, 1, 28, 28), uint8 0..255 or float 0..1 -> (N, 1, 28, 28) uint8 tensor."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[2:]) != (28, 28):
        raise UsageError(f"images must be (N, 28, 28) or (N, C, 28, 28), not {tuple(x.shape)}; "
                         "other sizes go through to_mnist() one by one")
    if x.is_floating_point():  # 0..1 floats, the network's input scaling
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if x.dtype != torch.uint8:
        if x.min() < 0 or x.max() > 255:
            raise UsageError("integer images must hold pixel values 0..255")
        x = x.to(torch.uint8)
    return x.contiguous()


def as_labels(labels: Any, n: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).flatten()
    if len(y) != n:
        raise UsageError(f"{len(y)} labels for {n} images")
    if len(y) and y.min() < 0:
        raise UsageError("labels must be class indices >= 0")
    return y
