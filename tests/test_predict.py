"""predict: real image files in every supported format, broken files, and preprocessing robustness."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_cnn.cli import main
from mnist_cnn.errors import MnistCnnError, UsageError
from mnist_cnn.inference import load_classifier
from mnist_cnn.predict import expand_inputs, predict_images
from mnist_cnn.preprocess import MAX_PIXELS, preprocess
from pasted_digits import paste_digit

FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "gif": "GIF", "webp": "WEBP", "tiff": "TIFF"}


def drawn_seven(size: tuple[int, int] = (120, 90), dark_on_light: bool = True, mode: str = "RGB") -> Image.Image:
    paper, ink = ((250, 245, 235), (20, 20, 60)) if dark_on_light else ((10, 10, 10), (240, 240, 240))
    image = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.line([(w * 0.3, h * 0.2), (w * 0.7, h * 0.2), (w * 0.45, h * 0.85)], fill=ink, width=max(2, w // 15))
    return image.convert(mode)


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """One drawn digit per format (grey/colour, both polarities, odd sizes) plus a non-image file."""
    d = tmp_path / "images"
    d.mkdir()
    for i, (ext, fmt) in enumerate(FORMATS.items()):
        image = drawn_seven(size=(60 + 50 * i, 200 - 20 * i), dark_on_light=i % 2 == 0, mode="L" if i % 3 == 0 else "RGB")
        image.save(d / f"seven-{i}.{ext}", format=fmt)
    (d / "readme.txt").write_text("not an image, and not picked up from a directory")
    return d


@pytest.fixture
def broken_dir(tmp_path) -> Path:
    d = tmp_path / "broken"
    d.mkdir()
    good = io.BytesIO()
    drawn_seven().save(good, format="PNG")
    jpeg = io.BytesIO()
    drawn_seven().save(jpeg, format="JPEG")
    (d / "zero.png").write_bytes(b"")
    (d / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (d / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (d / "text.png").write_text("hello, I am not a PNG")
    Image.new("RGB", (200, 100), (255, 255, 255)).save(d / "blank.png")
    (d / "huge.png").write_bytes(huge_png(9_000, 9_000))     # over our limit, under PIL's
    (d / "bomb.png").write_bytes(huge_png(20_000, 20_000))   # over PIL's decompression-bomb limit too
    return d


def test_every_format_preprocesses_to_the_same_view_of_the_digit(image_dir):
    views = [preprocess(p) for p in sorted(image_dir.glob("seven-*"))]
    assert len(views) == len(FORMATS)
    for i, v in enumerate(views):
        assert v.image.shape == (1, 28, 28) and v.image.dtype == torch.uint8
        assert v.inverted == (i % 2 == 0)
        rows, cols = (v.image[0] > 40).nonzero().unbind(1)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in range(17, 23)  # ~20 px box
        mass = v.image[0].double()
        ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        centre = ((ys * mass).sum() / mass.sum(), (xs * mass).sum() / mass.sum())
        assert all(abs(c - 14) <= 1 for c in centre), centre  # centre of mass at the centre, as MNIST


def test_high_bit_depth_images_match_their_8_bit_version(tmp_path):
    """16-bit PNGs and float/int32 TIFFs (scanners, microscopes) are scaled, not clipped at 255."""
    grey = np.asarray(drawn_seven(mode="L"), dtype=np.float64) / 255  # dark ink on light paper
    expected = preprocess(Image.fromarray((grey * 255).round().astype(np.uint8))).image.int()
    for name, pixels in {"16.png": (grey * 65535).round().astype(np.uint16), "f.tiff": grey.astype(np.float32),
                         "i.tiff": (grey * 65535).round().astype(np.int32)}.items():
        Image.fromarray(pixels).save(tmp_path / name)
        view = preprocess(tmp_path / name)
        assert view.inverted and (view.image.int() - expected).abs().max() <= 2, name


def test_broken_files_each_fail_with_a_clear_message(broken_dir):
    expected = {"zero.png": "empty (0 bytes)", "truncated.png": "not a readable image",
                "truncated.jpg": "not a readable image", "text.png": "not a readable image",
                "blank.png": "no visible ink", "huge.png": f"more than the {MAX_PIXELS:,} pixels allowed",
                "bomb.png": f"more than the {MAX_PIXELS:,} pixels allowed"}
    for name, message in expected.items():
        with pytest.raises(MnistCnnError) as info:  # never a raw PIL error
            preprocess(broken_dir / name)
        text = str(info.value)
        assert message in text and name in text and "\n" not in text, text


def test_predict_library_top_k_json_and_saved_views(toy_trained_run, image_dir, broken_dir, tmp_path):
    classifier = load_classifier(toy_trained_run, "cpu")
    inputs = [image_dir, broken_dir / "zero.png", broken_dir / "blank.png", tmp_path / "missing.png"]
    results = predict_images(classifier, inputs, top_k=4, save_preprocessed=tmp_path / "seen")
    assert [Path(r.path).name for r in results] == sorted(p.name for p in image_dir.glob("seven-*")) + [
        "zero.png", "blank.png", "missing.png"]
    good = [r for r in results if r.ok]
    assert len(good) == len(FORMATS)
    for r in good:
        probs = [t["probability"] for t in r.top]
        assert len(r.top) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
        with Image.open(r.preprocessed) as im:
            assert im.size == (28, 28) and im.mode == "L"
    assert "no such file" in results[-1].error
    with pytest.raises(UsageError):
        predict_images(classifier, [image_dir], top_k=0)
    assert len(predict_images(classifier, [image_dir], top_k=99)[0].top) == 10  # capped at the class count


def test_predict_command_exit_codes_and_stderr(toy_trained_run, image_dir, broken_dir, capsys):
    assert main(["predict", str(toy_trained_run), str(image_dir)]) == 0
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == len(FORMATS) and out.err == ""
    code = main(["predict", str(toy_trained_run), str(image_dir / "seven-0.png"), str(broken_dir), "--json", "--top-k", "2"])
    out = capsys.readouterr()
    assert code == 1
    results = json.loads(out.out)
    assert len(results) == 1 + 7 and len(results[0]["top"]) == 2 and "error" not in results[0]
    errors = out.err.strip().splitlines()
    assert len(errors) == 7 and all(line.startswith("mnist-cnn: error: ") for line in errors)
    assert "Traceback" not in out.err


def test_empty_directory_and_user_files_are_respected(toy_trained_run, tmp_path, image_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert expand_inputs([empty]) == [empty]
    assert main(["predict", str(toy_trained_run), str(empty)]) == 1
    assert "holds no image files" in capsys.readouterr().err
    seen = tmp_path / "seen"
    seen.mkdir()
    (seen / "seven-0.png").write_bytes(b"mine")
    assert main(["predict", str(toy_trained_run), str(image_dir / "seven-0.png"), "--save-preprocessed", str(seen)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (seen / "seven-0.png").read_bytes() == b"mine"


@pytest.mark.slow
def test_real_digits_in_every_format_are_recognised(trained_mnist_run, real_mnist_env, tmp_path, capsys):
    from mnist_cnn.runs import load_split

    test = load_split({"dataset": "mnist"}, "test")
    rng = np.random.default_rng(1)
    for i, (ext, fmt) in enumerate(FORMATS.items()):
        data, _ = paste_digit(test.images[i, 0].numpy(), rng)
        Image.open(io.BytesIO(data)).save(tmp_path / f"{i}-label{int(test.labels[i])}.{ext}", format=fmt)
    assert main(["predict", str(trained_mnist_run), str(tmp_path), "--json", "--top-k", "1"]) == 0
    for r in json.loads(capsys.readouterr().out):
        assert r["top"][0]["class"] == Path(r["path"]).stem.split("label")[1], r


@pytest.mark.slow
def test_preprocessing_keeps_accuracy_on_pasted_test_digits(trained_mnist_run, real_mnist_env):
    """1000 test digits upscaled 1-10x onto larger canvases at random offsets, grey or colour,
    either polarity, saved as PNG/JPEG/BMP: accuracy within 1 point of the plain 28x28 images."""
    from pasted_digits import robustness

    rng = np.random.default_rng(0)
    stroke = np.zeros((28, 28), np.uint8)
    stroke[6:22, 12:16] = 255
    made = [paste_digit(stroke, rng) for _ in range(200)]  # the generator really varies what it should
    assert {m[1]["dark_on_light"] for m in made} == {True, False} and {m[1]["rgb"] for m in made} == {True, False}
    assert {m[1]["format"] for m in made} == {"PNG", "JPEG", "BMP"}
    plain, pasted = robustness(str(trained_mnist_run), 1000, seed=0)
    print(f"\npreprocessing robustness: plain {plain:.4f}, pasted {pasted:.4f} on 1000 test images")
    assert pasted >= plain - 0.01
