"""Classifying people's own image files with a trained run (or an exported .onnx).

Each file goes through `preprocess` (MNIST's own recipe), the good ones are classified in one
batch, and each bad one becomes a per-file error so the rest still get an answer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from mnist_cnn.errors import MnistCnnError, UsageError

# What a directory argument expands to (files given by name are always tried, whatever their suffix).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class Prediction:
    path: str
    top: list[dict[str, Any]] = field(default_factory=list)  # [{"class": name, "probability": p}], best first
    inverted: bool = False          # the file had dark ink on a light background
    preprocessed: str | None = None  # where the 28x28 view was saved, if asked
    error: str | None = None        # why this file could not be classified

    @property
    def ok(self) -> bool:
        return self.error is None


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a directory becomes its image files (by suffix, sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.name.startswith("."))
            out.extend(found or [p])  # an image-less directory stays, and fails as one entry
        else:
            out.append(p)
    return out


def predict_images(classifier, paths: Iterable[str | Path], top_k: int = 3,
                   save_preprocessed: str | Path | None = None) -> list[Prediction]:
    """One Prediction per input file (directories expanded), in order; failures carry `error`."""
    from mnist_cnn.preprocess import preprocess

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {top_k}")
    top_k = min(top_k, len(classifier.class_names))
    files = expand_inputs(paths)
    if not files:
        raise UsageError("no image files given")
    results, images, good = [], [], []
    for path in files:
        result = Prediction(str(path))
        results.append(result)
        if path.is_dir():
            result.error = f"{path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
            continue
        try:
            pre = preprocess(path)
        except MnistCnnError as e:
            result.error = str(e)
            continue
        result.inverted = pre.inverted
        images.append(pre.image)
        good.append(result)
    if images:
        batch = torch.stack(images)  # (N, 1, 28, 28) uint8
        probabilities = torch.softmax(classifier.logits(batch).double(), 1)
        values, indices = probabilities.topk(top_k, 1)
        for result, v, i in zip(good, values.tolist(), indices.tolist()):
            result.top = [{"class": classifier.class_names[k], "probability": p} for k, p in zip(i, v)]
        if save_preprocessed is not None:
            for result, path in zip(good, _save_views(batch, [Path(r.path) for r in good], save_preprocessed)):
                result.preprocessed = str(path)
    return results


def _save_views(batch: torch.Tensor, sources: list[Path], out_dir: str | Path) -> list[Path]:
    """Each 28x28 view as <stem>.png (a counter added on name clashes), never over a file of the user's."""
    from PIL import Image

    from mnist_cnn.outputs import OutputDir

    names: list[str] = []
    for src in sources:
        name, n = f"{src.stem}.png", 1
        while name in names:
            n += 1
            name = f"{src.stem}-{n}.png"
        names.append(name)
    paths = OutputDir(out_dir).claim(names)
    for image, path in zip(batch, paths):
        Image.fromarray(image[0].numpy()).save(path)  # (28, 28) uint8 -> mode L
    return paths


def format_prediction(p: Prediction) -> str:
    best = "  ".join(f"{t['class']} {t['probability']:.1%}" for t in p.top)
    return f"{p.path}: {best}" + ("  (inverted: dark ink on light)" if p.inverted else "")


def predictions_json(predictions: list[Prediction]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(p).items() if v is not None} for p in predictions]
