"""load_dataset: a data set's train/validation/test splits as uint8 image and int64 label tensors."""
from __future__ import annotations

import operator
import sys
from pathlib import Path

import numpy as np
import torch

from mnist_cnn.data.dataset import Dataset, Split
from mnist_cnn.data.registry import get_spec
from mnist_cnn.data.sources import fetch_arrays
from mnist_cnn.errors import UsageError


def check_request(name: str, data_dir: str | Path | None = None, validation_size: int = 5000) -> int | None:
    """The checks `load_dataset` makes before touching any data file, as a UsageError.

    Returns the size of the official training file (train + validation images), or None for
    `folder`, whose size is known only once its images are read.
    """
    if name == "folder":
        if data_dir is None:
            raise UsageError("dataset folder needs --data-dir DIR holding DIR/<class>/*.png "
                             "(or DIR/train/<class>/ and DIR/test/<class>/)")
        return None
    spec = get_spec(name)
    n_train = spec.file("train_images").count
    try:
        if isinstance(validation_size, bool):
            raise TypeError
        validation_size = operator.index(validation_size)
    except TypeError:
        raise UsageError(f"validation size must be an integer, got {validation_size!r}") from None
    if not 0 <= validation_size < n_train:
        raise UsageError(
            f"validation size must be between 0 and {n_train - 1} for {spec.name} "
            f"({n_train} training images), got {validation_size}"
        )
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise UsageError(f"data dir {Path(data_dir).expanduser()} does not exist or is not a directory")
    return n_train


def load_dataset(
    name: str = "mnist",
    data_dir: str | Path | None = None,
    validation_size: int = 5000,
    progress: bool | None = None,
) -> Dataset:
    """Load a registered data set, fetching and verifying its files on first use.

    As in the TensorFlow lesson's read_data_sets, validation is the FIRST `validation_size`
    images of the official training file and train is the rest (55,000/5,000 for MNIST); test
    is the official test file. `data_dir` is a directory holding the four IDX files (plain or
    .gz), tried before the cache and downloads. `progress=None` shows download bars only when
    stderr is a terminal.

    `name="folder"` reads people's own images from `data_dir` instead (one folder per class;
    see mnist_cnn.data.folder for the layout and how images are converted and split).
    """
    check_request(name, data_dir, validation_size)
    if name == "folder":
        from mnist_cnn.data.folder import load_folder  # at use: Pillow is imported only for image folders

        return load_folder(data_dir, validation_size)
    spec = get_spec(name)
    data_dir = Path(data_dir).expanduser() if data_dir is not None else None
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()

    arrays, source = fetch_arrays(spec, data_dir, progress)

    def images(key: str) -> torch.Tensor:
        array = arrays[key]
        if spec.transposed:  # EMNIST stores each image column-major
            array = array.transpose(0, 2, 1)
        # Copy: the parsed arrays are read-only views on file bytes; torch wants owned memory.
        return torch.from_numpy(np.array(array, dtype=np.uint8, order="C")).unsqueeze(1)

    def labels(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].astype(np.int64))

    train_x, train_y = images("train_images"), labels("train_labels")
    v = operator.index(validation_size)
    return Dataset(
        name=spec.name,
        class_names=spec.class_names,
        train=Split(train_x[v:], train_y[v:]),
        validation=Split(train_x[:v], train_y[:v]),
        test=Split(images("test_images"), labels("test_labels")),
        source=source,
    )
