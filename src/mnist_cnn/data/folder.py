"""People's own images as a data set: one folder per class, like torchvision's ImageFolder.

    root/train/<class>/*.png   root/test/<class>/*.png     (explicit test set), or
    root/<class>/*.png  (or root/train/<class>/*.png alone) (test split off, see below)

A root holding a train/ folder is the first layout, so a class cannot be named "train".

Class names are the folder names, sorted (label = position). Image files are the direct
children of a class folder with a known image suffix; hidden files and other files are ignored
(and counted in `Dataset.source`).

Pixels: an image that is exactly 28x28 is taken as it is (converted to grey): it is assumed to
be in the form the network should see already (e.g. MNIST exported to PNG). Any other size is
a photo or scan and goes through `mnist_cnn.preprocess`, the same MNIST-style steps `predict`
applies (invert a light background, crop the ink, longest side 20 px, centre of mass at the
centre), so a model trained here sees its own inputs the way it will see them at prediction.

Splits, deterministic and independent of file-system order: images are ordered by the SHA-256
of "<class>/<file name>", a fixed shuffle that keeps classes mixed; validation is the first
`validation_size` training images in that order (as the lesson's read_data_sets took the first
5,000 of MNIST's shuffled training file). Without a test/ folder, an image belongs to the test
split when its hash falls in the lowest TEST_FRACTION of the range: adding or removing other
images never moves an image between train and test.

An unreadable or blank image is an error naming the file (a data set with broken files should
be fixed, not silently trained on less data).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mnist_cnn.data.dataset import Dataset, Split
from mnist_cnn.errors import DataError, UsageError
from mnist_cnn.preprocess import ImageError, mnist_style, open_image, to_grayscale

NAME = "folder"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
TEST_FRACTION = 1 / 7  # MNIST's 10,000 test images of 70,000
SIZE = 28  # pixels; images of exactly this size are used verbatim
MAX_ERRORS_SHOWN = 3


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def _is_test(key: str) -> bool:
    return _hash("test-split:" + key) < TEST_FRACTION * 2**64


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _scan(class_dir: Path) -> tuple[list[Path], int]:
    """(image files, number of other files ignored) directly inside a class folder."""
    images, ignored = [], 0
    for p in class_dir.iterdir():
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            ignored += 1
    return images, ignored


def image_to_mnist(path: Path) -> torch.Tensor:
    """(1, 28, 28) uint8 for one file: verbatim grey when 28x28, else MNIST-style preprocessing."""
    image = open_image(path)
    gray = to_grayscale(image)  # (H, W) float32 in [0, 1]
    if gray.shape == (SIZE, SIZE):
        return torch.from_numpy(np.rint(gray * 255).astype(np.uint8))[None]
    return mnist_style(gray, str(path)).image


def _load_images(paths: list[Path]) -> torch.Tensor:
    """(N, 1, 28, 28) uint8; every failure is collected, then reported with the files' names."""
    def one(path: Path) -> torch.Tensor | str:
        try:
            return image_to_mnist(path)
        except ImageError as e:
            return str(e)

    # Decoding is per file (PIL releases the GIL while decoding); a few threads help on big sets.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, paths))
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(f"{len(errors)} of {len(paths)} images cannot be used: {shown}{more}")
    if not results:
        return torch.empty(0, 1, SIZE, SIZE, dtype=torch.uint8)
    return torch.stack(results)  # type: ignore[arg-type]


def _split(items: list[tuple[str, Path, int]]) -> Split:
    """Images and labels of (key, path, label) items, in the fixed hash order of their keys."""
    items = sorted(items, key=lambda item: (_hash(item[0]), item[0]))
    images = _load_images([path for _, path, _ in items])
    return Split(images, torch.tensor([label for _, _, label in items], dtype=torch.int64))


def load_folder(root: str | Path, validation_size: int = 5000) -> Dataset:
    """A Dataset from an image-folder tree (see the module docstring for layout and rules)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"data dir {root} does not exist or is not a directory")
    train_root = root / "train" if (root / "train").is_dir() else root
    explicit_test = train_root != root and (root / "test").is_dir()
    classes = _class_dirs(train_root)
    if not classes:
        raise UsageError(f"{train_root} has no class folders; expected {train_root}/<class>/*.png "
                         f"(or {root}/train/<class>/ and {root}/test/<class>/)")
    class_names = tuple(d.name for d in classes)
    label_of = {name: i for i, name in enumerate(class_names)}

    train_items: list[tuple[str, Path, int]] = []
    test_items: list[tuple[str, Path, int]] = []
    ignored = 0
    for class_dir in classes:
        files, skipped = _scan(class_dir)
        ignored += skipped
        if not files:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            key = f"{class_dir.name}/{path.name}"
            target = test_items if not explicit_test and _is_test(key) else train_items
            target.append((key, path, label_of[class_dir.name]))
    if explicit_test:
        for class_dir in _class_dirs(root / "test"):
            if class_dir.name not in label_of:
                raise DataError(f"test class folder {class_dir} has no training folder "
                                f"{train_root / class_dir.name} (classes: {', '.join(class_names)})")
            files, skipped = _scan(class_dir)
            ignored += skipped
            test_items += [(f"{class_dir.name}/{p.name}", p, label_of[class_dir.name]) for p in files]

    n = len(train_items)
    if not 0 <= validation_size < n:
        raise UsageError(f"validation size must be between 0 and {n - 1} for {root} ({n} training images), "
                         f"got {validation_size}; pass --validation-size")
    train = _split(train_items)
    test = _split(test_items)
    v = validation_size
    layout = "train/ and test/ folders" if explicit_test else f"class folders, test = hash-chosen ~1/{round(1 / TEST_FRACTION)}"
    source = f"image folders {root} ({layout}; {ignored} non-image files ignored)"
    return Dataset(name=NAME, class_names=class_names, train=Split(train.images[v:], train.labels[v:]),
                   validation=Split(train.images[:v], train.labels[:v]), test=test, source=source)
