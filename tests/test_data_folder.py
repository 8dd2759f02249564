"""The image-folder data set (--dataset folder): layout, pixels, splits and errors, on tiny trees."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from image_folders import write_image_folder
from mnist_cnn.cli import main
from mnist_cnn.data import load_dataset
from mnist_cnn.data.folder import TEST_FRACTION
from mnist_cnn.errors import DataError, UsageError
from mnist_cnn.preprocess import preprocess


def pixels_by_key(split) -> set[bytes]:
    return {img.numpy().tobytes() for img in split.images}


def test_class_folders_verbatim_28x28_and_hash_split(tmp_path):
    written = write_image_folder(tmp_path / "d", n=280)
    ds = load_dataset("folder", tmp_path / "d", validation_size=30)
    assert ds.name == "folder" and ds.class_names == tuple(f"c{i}" for i in range(10))
    n_all = len(ds.train) + len(ds.validation) + len(ds.test)
    assert n_all == 280 and len(ds.validation) == 30
    assert 0.5 * TEST_FRACTION * 280 < len(ds.test) < 2 * TEST_FRACTION * 280
    assert ds.train.images.shape[1:] == (1, 28, 28) and ds.train.images.dtype == torch.uint8
    # 28x28 files come back pixel for pixel, each with its folder's label.
    expected = {(img.tobytes(), int(key[1])) for key, img in written.items()}
    got = {(img.numpy().tobytes(), int(label)) for s in (ds.train, ds.validation, ds.test)
           for img, label in zip(s.images, s.labels)}
    assert got == expected
    # Validation is the first images of a fixed order that mixes classes (not all of class 0).
    assert len(set(ds.validation.labels.tolist())) >= 5
    again = load_dataset("folder", tmp_path / "d", validation_size=30)
    assert torch.equal(again.validation.images, ds.validation.images) and torch.equal(again.test.labels, ds.test.labels)


def test_adding_images_never_moves_one_between_train_and_test(tmp_path):
    write_image_folder(tmp_path / "d", n=150, seed=1)
    before = load_dataset("folder", tmp_path / "d", validation_size=10)
    write_image_folder(tmp_path / "d", n=150, seed=2)  # new files, new names
    after = load_dataset("folder", tmp_path / "d", validation_size=10)
    assert pixels_by_key(before.test) <= pixels_by_key(after.test)
    assert not pixels_by_key(before.test) & (pixels_by_key(after.train) | pixels_by_key(after.validation))


def test_train_and_test_folders(tmp_path):
    write_image_folder(tmp_path / "d" / "train", n=120, seed=1)
    test_written = write_image_folder(tmp_path / "d" / "test", n=40, seed=2)
    ds = load_dataset("folder", tmp_path / "d", validation_size=20)
    assert len(ds.train) == 100 and len(ds.validation) == 20 and len(ds.test) == 40
    assert pixels_by_key(ds.test) == {img.tobytes() for img in test_written.values()}
    # train/ alone: test is split off it as in the flat layout.
    write_image_folder(tmp_path / "t" / "train", n=120, seed=1)
    only_train = load_dataset("folder", tmp_path / "t", validation_size=20)
    assert len(only_train.test) > 0 and len(only_train.train) + len(only_train.validation) + len(only_train.test) == 120


def test_photos_get_mnist_style_preprocessing_and_other_files_are_ignored(tmp_path):
    root = tmp_path / "d"
    for cls, box in (("one", (45, 10, 55, 70)), ("zero", (30, 20, 70, 60))):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            img = Image.new("RGB", (100, 80), "white")  # a dark digit on white paper, not 28x28
            img.paste((20, 20, 20), (box[0] + i, box[1], box[2] + i, box[3]))
            img.save(root / cls / f"{i}.jpg" if i % 2 else root / cls / f"{i}.png")
    (root / "one" / "notes.txt").write_text("not an image")
    (root / "one" / ".DS_Store").write_bytes(b"\0")
    ds = load_dataset("folder", root, validation_size=1)
    assert ds.class_names == ("one", "zero")
    assert "1 non-image files ignored" in ds.source
    everything = torch.cat([ds.train.images, ds.validation.images, ds.test.images])
    assert len(everything) == 8
    expected = {preprocess(p).image.numpy().tobytes() for p in root.glob("*/[0-9].*")}
    assert {img.numpy().tobytes() for img in everything} == expected
    # MNIST-style: white ink on black, the ink's box 20 px on its longer side.
    assert all(img[0, 0, 0] == 0 and img.max() > 200 for img in everything)


def test_bad_images_are_an_error_naming_the_files(tmp_path):
    write_image_folder(tmp_path / "d", n=60)
    (tmp_path / "d" / "c3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    Image.new("L", (50, 50), 255).save(tmp_path / "d" / "c4" / "blank.png")
    with pytest.raises(DataError) as e:
        load_dataset("folder", tmp_path / "d", validation_size=5)
    assert "2 of" in str(e.value) and "broken.png" in str(e.value) and "blank.png" in str(e.value)


@pytest.mark.parametrize("make, error, match", [
    (lambda r: r.mkdir(), UsageError, "no class folders"),
    (lambda r: (r / "a").mkdir(parents=True), DataError, "holds no images"),
    (lambda r: (write_image_folder(r / "train", 30), (r / "test" / "zebra").mkdir(parents=True)),
     DataError, "test class folder .*zebra"),
    (lambda r: write_image_folder(r, 20), UsageError, "validation size must be between 0 and"),
])
def test_layout_errors(tmp_path, make, error, match):
    root = tmp_path / "d"
    make(root)
    with pytest.raises(error, match=match):
        load_dataset("folder", root, validation_size=25)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--dataset", "folder", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --data-dir" in err
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err

