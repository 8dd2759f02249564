"""Property tests of `mnist_cnn.preprocess`: whatever image or bytes come in, the result is
an MNIST-style (1, 28, 28) uint8 tensor or an ImageError, never any other exception."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.preprocess import ImageError, preprocess

MODES = ("L", "RGB", "RGBA", "P", "1", "LA", "I;16", "I", "F", "CMYK")
CONTENTS = ("noise", "blank", "stroke", "dot", "two-tone", "gradient")
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_image(mode: str, width: int, height: int, content: str, seed: int) -> Image.Image:
    """A width x height picture in `mode`; pixel values come from a numpy generator (fast)."""
    rng = np.random.default_rng(seed)
    gray = np.full((height, width), rng.integers(0, 256), np.uint8)
    if content == "noise":
        gray = rng.integers(0, 256, (height, width), dtype=np.uint8)
    elif content == "stroke":  # a dark or light bar somewhere, possibly 1 px thick
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        gray[y0:y0 + rng.integers(1, height + 1), x0:x0 + rng.integers(1, 4)] = 255 - gray[0, 0]
    elif content == "dot":
        gray[rng.integers(0, height), rng.integers(0, width)] = 255 - gray[0, 0]
    elif content == "two-tone":
        gray[:, : width // 2] = 255 - gray[0, -1]
    elif content == "gradient":
        gray = np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)
    image = Image.fromarray(gray, "L")
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (height, width), dtype=np.uint8) if rng.random() < 0.5 else np.full((height, width), 255, np.uint8)
        return Image.merge("RGBA", (image, image, image, Image.fromarray(alpha, "L")))
    if mode == "P":
        paletted = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=int(rng.integers(1, 256)))
        if rng.random() < 0.3:
            paletted.info["transparency"] = int(rng.integers(0, 256))
        return paletted
    return image.convert(mode)


def check(result_or_error) -> None:
    result = result_or_error
    assert isinstance(result.image, torch.Tensor)
    assert result.image.shape == (1, 28, 28) and result.image.dtype == torch.uint8
    assert isinstance(result.inverted, bool)
    assert int(result.image.max()) > 0  # some ink survived


def outcome(source) -> None:
    """preprocess(source) must return a valid result or raise ImageError (one-line message)."""
    try:
        result = preprocess(source)
    except ImageError as e:
        assert str(e) and "\n" not in str(e)
        return
    check(result)


@FAST
@given(mode=st.sampled_from(MODES), width=st.integers(1, 300), height=st.integers(1, 300),
       content=st.sampled_from(CONTENTS), seed=st.integers(0, 2**32 - 1))
def test_any_pil_image_gives_a_28x28_tensor_or_image_error(mode, width, height, content, seed):
    outcome(make_image(mode, width, height, content, seed))


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(("L", "RGB", "RGBA", "P", "1")), fmt=st.sampled_from(("PNG", "BMP", "GIF", "JPEG", "TIFF")),
       width=st.integers(1, 120), height=st.integers(1, 120), content=st.sampled_from(CONTENTS),
       seed=st.integers(0, 2**32 - 1), cut=st.one_of(st.none(), st.floats(0, 1)))
def test_encoded_files_whole_or_truncated(mode, fmt, width, height, content, seed, cut):
    image = make_image(mode, width, height, content, seed)
    if fmt == "JPEG" and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    data = buffer.getvalue()
    if cut is not None:  # a download or copy that stopped part way
        data = data[: int(len(data) * cut)]
    outcome(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=2000),
       prefix=st.sampled_from((b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff\xe0", b"BM", b"II*\x00", b"P5\n")))
def test_random_bytes_are_an_image_error(data, prefix):
    with pytest.raises(ImageError):
        preprocess(prefix + data)


def test_files_that_are_not_images(tmp_path):
    cases = {"empty.png": b"", "text.png": b"hello\n", "zeros.jpg": bytes(4096)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match=name):
            preprocess(tmp_path / name)
    with pytest.raises(ImageError, match="no such file"):
        preprocess(tmp_path / "missing.png")
    with pytest.raises(MnistCnnError):
        preprocess(tmp_path)  # a directory
