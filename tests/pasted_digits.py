"""MNIST digits pasted into photo-like images: other scales, offsets, colours, inversions and file
formats. Used to check that `preprocess` recovers what the network was trained on."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def paste_digit(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, dict]:
    """(28, 28) uint8 white-on-black digit -> encoded image file bytes and how it was made.

    The digit (with MNIST's own 4 px margin) is upscaled 1-10x with bicubic resampling, placed at a
    random offset on a canvas up to 200 px wider and taller, in a random ink and paper colour
    (dark ink on light paper or light on dark, grey or RGB), saved as PNG, JPEG or BMP.
    """
    size = int(rng.integers(28, 281))
    big = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    h, w = size + int(rng.integers(0, 201)), size + int(rng.integers(0, 201))
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    alpha = np.zeros((h, w), np.float32)
    alpha[top:top + size, left:left + size] = np.clip(big, 0, 1)
    dark_on_light = bool(rng.integers(0, 2))
    colour = bool(rng.integers(0, 2))
    light = rng.uniform(200, 255, 3 if colour else 1)
    dark = rng.uniform(0, 60, 3 if colour else 1)
    paper, ink = (light, dark) if dark_on_light else (dark, light)
    pixels = paper + (ink - paper) * alpha[..., None]  # (h, w, 1 or 3)
    pixels = np.clip(pixels.round(), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    fmt = str(rng.choice(["PNG", "JPEG", "BMP"]))
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return out.getvalue(), {"size": size, "canvas": (h, w), "dark_on_light": dark_on_light, "rgb": colour, "format": fmt}


def robustness(run: str, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(plain accuracy, pasted accuracy) of a run (or .onnx) on n random MNIST test digits.
    Needs the run's data set (real MNIST) to be loadable."""
    import torch

    from mnist_cnn.runs import load_split
    from mnist_cnn.inference import load_classifier
    from mnist_cnn.preprocess import preprocess

    classifier = load_classifier(run, "cpu")
    test = load_split(classifier.config, "test")
    rng = np.random.default_rng(seed)
    idx = torch.from_numpy(rng.choice(len(test.labels), n, replace=False))
    images, labels = test.images[idx], test.labels[idx]
    plain = (classifier.logits(images).argmax(1) == labels).double().mean().item()
    views = torch.stack([preprocess(paste_digit(images[i, 0].numpy(), rng)[0]).image for i in range(n)])
    pasted = (classifier.logits(views).argmax(1) == labels).double().mean().item()
    return plain, pasted


if __name__ == "__main__":  # python tests/pasted_digits.py RUN [N]: the robustness figure for any run
    import sys

    plain, pasted = robustness(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    print(f"plain {plain:.4f}  pasted {pasted:.4f}  difference {100 * (pasted - plain):+.2f} points")
