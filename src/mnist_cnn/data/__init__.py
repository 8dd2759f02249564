"""Data layer: MNIST-family data sets, fetched, verified and split like the TF1 lesson did.

    from mnist_cnn.data import load_dataset
    ds = load_dataset("mnist")        # ds.train / ds.validation / ds.test: uint8 images, int64 labels
"""
from mnist_cnn.data.dataset import Dataset, Split
from mnist_cnn.data.idx import read_idx, write_idx
from mnist_cnn.data.load import load_dataset
from mnist_cnn.data.registry import DATASETS, DatasetSpec, FileSpec
from mnist_cnn.data.sources import cache_root

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "FileSpec",
    "Split",
    "cache_root",
    "load_dataset",
    "read_idx",
    "write_idx",
]
