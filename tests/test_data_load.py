"""load_dataset: split rule, tensor types, argument checks, real MNIST from the cache."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from mnist_cnn.data import DATASETS, Dataset, Split, load_dataset, read_idx
from mnist_cnn.data import sources
from mnist_cnn.errors import UsageError


def write_cache(cache, spec, arrays):
    from mnist_cnn.data.idx import encode_idx
    (cache / spec.name).mkdir(parents=True)
    for f in spec.files:
        (cache / spec.name / f.name).write_bytes(encode_idx(arrays[f.key]))


def test_split_rule_and_types(data_env, tiny):
    spec, arrays = tiny
    write_cache(data_env, spec, arrays)
    ds = load_dataset("tiny", validation_size=5)
    assert isinstance(ds, Dataset) and isinstance(ds.train, Split)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (7, 5, 4)
    assert ds.name == "tiny" and ds.class_names == ("a", "b", "c")
    for split in (ds.train, ds.validation, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(split),)
    # validation = FIRST v of the training file, train = the rest, in file order
    np.testing.assert_array_equal(ds.validation.images[:, 0].numpy(), arrays["train_images"][:5])
    np.testing.assert_array_equal(ds.train.images[:, 0].numpy(), arrays["train_images"][5:])
    np.testing.assert_array_equal(ds.train.labels.numpy(), arrays["train_labels"][5:])
    ds.train.images[0, 0, 0, 0] = 7  # tensors own writable memory (no read-only numpy views)


@pytest.mark.parametrize("v", [0, 11])
def test_validation_size_bounds_accepted(data_env, tiny, v):
    spec, arrays = tiny
    write_cache(data_env, spec, arrays)
    ds = load_dataset("tiny", validation_size=v)
    assert (len(ds.train), len(ds.validation)) == (12 - v, v)


@pytest.mark.parametrize("v", [-1, 12, 5.0, True, "5"])
def test_validation_size_rejected_before_any_fetch(data_env, tiny, v):
    with pytest.raises(UsageError, match="validation size"):
        load_dataset("tiny", validation_size=v)
    assert not data_env.exists()


def test_registry_names_and_classes():
    assert set(DATASETS) >= {"mnist", "fashion-mnist", "kmnist", "emnist-digits"}
    assert DATASETS["mnist"].class_names == tuple("0123456789")
    assert DATASETS["fashion-mnist"].class_names[6] == "Shirt"
    assert DATASETS["kmnist"].class_names == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
    emnist = DATASETS["emnist-digits"]
    assert emnist.transposed and emnist.file("train_images").count == 240000
    assert emnist.file("test_labels").count == 40000
    for spec in DATASETS.values():  # checksums: official hex MD5s or honestly None
        for f in spec.files:
            assert f.md5 is None or (len(f.md5) == 32 and int(f.md5, 16) >= 0)


def test_name_normalised(data_env, tiny):
    spec, arrays = tiny
    write_cache(data_env, spec, arrays)
    assert load_dataset(" TINY ", validation_size=1).name == "tiny"


def test_real_mnist_splits_from_cache(real_mnist_cache, monkeypatch):
    monkeypatch.setenv(sources.ENV_CACHE, str(real_mnist_cache))
    monkeypatch.setenv(sources.ENV_MIRRORS, "")
    for fetch in ("_from_mirrors", "_from_archive", "_from_debian", "_from_hub"):  # the cache alone answers
        monkeypatch.setattr(sources, fetch, lambda *a, _f=fetch, **k: pytest.fail(f"{_f} called on a cache hit"))
    ds = load_dataset("mnist")
    assert ds.source == f"cache {real_mnist_cache / 'mnist'}"
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (55000, 5000, 10000)
    official = read_idx(real_mnist_cache / "mnist" / "train-images-idx3-ubyte")
    labels = read_idx(real_mnist_cache / "mnist" / "train-labels-idx1-ubyte")
    np.testing.assert_array_equal(ds.validation.images[:, 0].numpy(), official[:5000])
    np.testing.assert_array_equal(ds.validation.labels.numpy(), labels[:5000])
    np.testing.assert_array_equal(ds.train.images[:, 0].numpy(), official[5000:])
    assert int(ds.test.images.max()) == 255 and int(ds.test.images.min()) == 0
    assert ds.train.labels[:3].tolist() == [int(x) for x in labels[5000:5003]]
    assert labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # the famous first MNIST labels
