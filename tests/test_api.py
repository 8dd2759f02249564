"""The public API (`from mnist_cnn import ...`): every name has a docstring example, and every
example runs and prints what it says (doctest, on synthetic data and tiny runs)."""
from __future__ import annotations

import doctest
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

import mnist_cnn
from mnist_cnn import api
from mnist_cnn.errors import UsageError

EXAMPLES = {t.name.removeprefix("mnist_cnn.api."): t for t in doctest.DocTestFinder().find(api) if t.examples}


def test_every_public_name_has_an_example():
    assert set(mnist_cnn.__all__) <= set(dir(mnist_cnn))
    without = [n for n in mnist_cnn.__all__ if n not in EXAMPLES and n != "Predictions"]
    assert without == [], f"public names without a docstring example: {without}"
    assert "classify" in EXAMPLES  # Predictions is shown by classify's example


# load_dataset's example loads real MNIST (the data chain's cache, built once per session).
REAL_DATA = {"load_dataset"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in REAL_DATA else n
                                  for n in sorted(EXAMPLES)])
def test_docstring_example(name, tmp_path, monkeypatch, request):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples' mkdtemp() lands in tmp_path
    if name in REAL_DATA:
        request.getfixturevalue("real_mnist_env")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    test = EXAMPLES[name]
    result = runner.run(test, out=report.append)
    assert result.attempted > 0
    assert result.failed == 0, "".join(report)


@pytest.fixture(scope="module")
def import_then_help() -> subprocess.CompletedProcess:
    """One fresh interpreter (a python + torch start-up, paid once for both tests below): imports
    mnist_cnn, checks that torch is not loaded, uses a public name, then prints help(mnist_cnn)."""
    code = ("import sys, mnist_cnn; assert 'torch' not in sys.modules; "
            "from mnist_cnn import make_config; assert 'torch' in sys.modules; print(make_config('fast').model); "
            "help(mnist_cnn)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PAGER": "cat", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out


def test_import_is_light(import_then_help):
    """`import mnist_cnn` does not import PyTorch; the first public name does."""
    assert import_then_help.stdout.splitlines()[0] == "fast"
    with pytest.raises(AttributeError):
        mnist_cnn.no_such_name  # noqa: B018


def test_help_lists_the_api(import_then_help):
    help_text = import_then_help.stdout.split("\n", 1)[1]
    for name in mnist_cnn.__all__:
        assert f"\n    {name}(" in help_text or f"class {name}(" in help_text, name


def test_classify_accepts_every_image_kind(tmp_path):
    """Arrays, tensors, floats, PIL images, files and lists of them reach the network as the same pixels."""
    from PIL import Image

    ds = api.dataset_from_arrays(np.zeros((60, 28, 28), np.uint8), np.arange(60) % 10, validation_size=10)
    run = api.train_model(api.make_config("seed", epochs=1, batch_size=50), dataset=ds, out_dir=tmp_path, quiet=True)
    net = api.load_run(run)
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a "1", already MNIST-style
    Image.fromarray(digit).save(tmp_path / "one.png")
    as_u8 = api.classify(net, digit[None])
    for other in (torch.from_numpy(digit)[None, None], digit[None].astype(np.float32) / 255, digit, [digit]):
        assert torch.equal(api.classify(net, other).images, as_u8.images)
        assert torch.allclose(api.classify(net, other).probabilities, as_u8.probabilities)
    from_file = api.classify(net, [tmp_path / "one.png", str(tmp_path / "one.png"), Image.open(tmp_path / "one.png")])
    assert len(from_file) == 3 and from_file.images.shape == (3, 1, 28, 28)
    assert torch.equal(from_file.images[0], from_file.images[2])
    # The MNIST recipe keeps a centred 20-px-high stroke where it was (within a pixel of rounding).
    assert (from_file.images[0].float() - as_u8.images[0].float()).abs().mean() < 40
    assert from_file.names[0] in net.class_names
    # A colour photo as an (H, W, 3) array: dark ink on white, any size, goes through the MNIST recipe.
    photo = np.full((90, 60, 3), 255, np.uint8)
    photo[10:80, 26:34] = (20, 30, 200)  # a blue-ink "1"
    seen = api.to_mnist(photo)
    assert seen.shape == (1, 28, 28) and int(seen[0, 14, 14]) > 150 and int(seen[0, 0, 0]) == 0
    with pytest.raises(UsageError):
        api.classify(net, np.zeros((2, 3, 28, 27), np.uint8))
    with pytest.raises(UsageError):
        api.classify(net, [])


def test_dataset_from_arrays_checks_its_input():
    with pytest.raises(UsageError, match="labels"):
        api.dataset_from_arrays(np.zeros((5, 28, 28), np.uint8), [0, 1])
    with pytest.raises(UsageError, match="class names"):
        api.dataset_from_arrays(np.zeros((3, 28, 28), np.uint8), [0, 1, 5], class_names=["a", "b"])
    with pytest.raises(UsageError, match="validation_size"):
        api.dataset_from_arrays(np.zeros((3, 28, 28), np.uint8), [0, 1, 2], validation_size=3)
    ds = api.dataset_from_arrays(np.full((4, 28, 28), 0.5), [0, 1, 0, 1], class_names=["no", "yes"], validation_size=1)
    assert ds.train.images.dtype == torch.uint8 and int(ds.train.images.max()) == 128
    assert ds.class_names == ("no", "yes") and len(ds.test) == 1


def test_layer_table_matches_the_lesson():
    rows = {r.name: r for r in api.layer_table("seed")}
    assert rows["conv2"].output_shape == (16, 14, 14) and rows["pool2"].output_shape == (16, 7, 7)
    assert rows["flatten"].output_shape == (784,) and rows["fc1"].parameters == 100_480
    assert rows["fc2"].output_shape == (10,) and sum(r.parameters for r in rows.values()) == 104_342


def test_create_model_forwards_the_shape_options():
    from mnist_cnn import create_model

    wide, narrow = create_model("best", width=32), create_model("best")
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in narrow.parameters())
    assert create_model("resnet", depth=2, width=8)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(UsageError, match="depth"):
        create_model("seed", depth=2)
