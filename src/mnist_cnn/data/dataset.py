"""The in-memory form of a data set: splits of uint8 image and int64 label tensors.

Its own module so that every loader (load.py for the registered IDX sets, folder.py for
people's own images) builds the same types without importing one another.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 1, 28, 28) uint8, raw pixels 0..255 as in the IDX file
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    name: str                     # registry name: "mnist", "fashion-mnist", ...
    class_names: tuple[str, ...]  # index = label
    train: Split
    validation: Split
    test: Split
    source: str                   # where the files came from, for humans
