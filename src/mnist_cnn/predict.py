"""Classifying images with a trained run (or an exported .onnx): one `Prediction` per image.

`classify` takes images in memory (arrays, tensors, PIL images, paths) and returns `Predictions`,
one `Prediction` per image; `predict_images` takes people's files: each goes through `preprocess`
(MNIST's own recipe), the good ones are classified in one batch, and each bad one becomes a
per-file error so the rest still get an answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import torch
from PIL import Image

from mnist_cnn.data.arrays import as_images_u8
from mnist_cnn.errors import MnistCnnError, UsageError
from mnist_cnn.inference import load_run
from mnist_cnn.outputs import OutputDir
from mnist_cnn.preprocess import preprocess

# What `classify` and `to_mnist` accept as one image.
ImageLike = Union[str, Path, bytes, np.ndarray, torch.Tensor, "Image.Image"]

# What a directory argument expands to (files given by name are always tried, whatever their suffix).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class Prediction:
    """One image's answer, the one prediction type: `Predictions[i]` (classify) and each file's
    result (predict) hold one."""

    probabilities: list[float] = field(metadata={"description": "one per class, summing to 1"})
    class_names: list[str] = field(metadata={"description": "the classes' names, in the model's output order"})
    inverted: bool = field(default=False, metadata={
        "description": "true when the input had dark ink on a light background (it was inverted)"})

    @property
    def label(self) -> int:
        """The index of the most probable class."""
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    @property
    def name(self) -> str:
        """The most probable class's name."""
        return self.class_names[self.label]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable classes as (name, probability), best first."""
        order = sorted(range(len(self.probabilities)), key=lambda i: -self.probabilities[i])[:k]
        return [(self.class_names[i], self.probabilities[i]) for i in order]


@dataclass
class FilePrediction:
    """What `predict_images` says about one input file: its Prediction, or why there is none."""

    path: str
    prediction: Prediction | None = None
    top_k: int = 3
    preprocessed: str | None = None  # where the 28x28 view was saved, if asked
    error: str | None = None         # why this file could not be classified

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def inverted(self) -> bool:
        return self.prediction is not None and self.prediction.inverted

    @property
    def top(self) -> list[dict[str, Any]]:
        """[{"class": name, "probability": p}], best first (the JSON form)."""
        return [] if self.prediction is None else [{"class": n, "probability": p} for n, p in self.prediction.top(self.top_k)]


def prediction_fields() -> dict[str, tuple[Any, Any]]:
    """Prediction's fields as (type, description): what serve's response model is built from."""
    kinds = {"probabilities": list[float], "class_names": list[str], "inverted": bool}
    return {f.name: (kinds[f.name], f.metadata["description"]) for f in fields(Prediction)}


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
    """One FilePrediction per input file (directories expanded), in order; failures carry `error`."""
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {top_k}")
    top_k = min(top_k, len(classifier.class_names))
    files = expand_inputs(paths)
    if not files:
        raise UsageError("no image files given")
    results, images, inverted, good = [], [], [], []
    for path in files:
        result = FilePrediction(str(path), top_k=top_k)
        results.append(result)
        if path.is_dir():
            result.error = f"{path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
            continue
        try:
            pre = preprocess(path)
        except MnistCnnError as e:
            result.error = str(e)
            continue
        images.append(pre.image)
        inverted.append(pre.inverted)
        good.append(result)
    if images:
        batch = torch.stack(images)  # (N, 1, 28, 28) uint8
        for result, prediction in zip(good, classify(classifier, batch).with_inverted(inverted)):
            result.prediction = prediction
        if save_preprocessed is not None:
            for result, path in zip(good, _save_views(batch, [Path(r.path) for r in good], save_preprocessed)):
                result.preprocessed = str(path)
    return results


def _save_views(batch: torch.Tensor, sources: list[Path], out_dir: str | Path) -> list[Path]:
    """Each 28x28 view as <stem>.png (a counter added on name clashes), never over a file of the user's."""
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


def format_prediction(p: FilePrediction) -> str:
    best = "  ".join(f"{t['class']} {t['probability']:.1%}" for t in p.top)
    return f"{p.path}: {best}" + ("  (inverted: dark ink on light)" if p.inverted else "")


def predictions_json(predictions: list[FilePrediction]) -> list[dict[str, Any]]:
    rows = [{"path": p.path, "top": p.top, "inverted": p.inverted, "preprocessed": p.preprocessed, "error": p.error}
            for p in predictions]
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def to_mnist(image: ImageLike) -> torch.Tensor:
    """One image as the network sees it: (1, 28, 28) uint8, white ink on black, MNIST-style.
    A 28x28 array or tensor is taken as it is; anything else goes through `preprocess`
    (examples: mnist_cnn.to_mnist)."""
    if isinstance(image, (np.ndarray, torch.Tensor)):
        a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if a.shape[-2:] == (28, 28) and a.size == 28 * 28:
            return as_images_u8(a.reshape(1, 28, 28))[0]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
            raise UsageError(f"one image at a time: (H, W) grey or (H, W, 3|4) colour, not shape {a.shape}")
        scaled = a.astype(np.float64) / (1.0 if np.issubdtype(a.dtype, np.floating) else 255.0)
        image = Image.fromarray((np.clip(scaled, 0, 1) * 255).round().astype(np.uint8))  # mode L, RGB or RGBA
    if isinstance(image, str):
        image = Path(image)
    return preprocess(image).image


@dataclass
class Predictions:
    """What `classify` returns for N images."""

    images: torch.Tensor         # (N, 1, 28, 28) uint8: what the network saw
    probabilities: torch.Tensor  # (N, classes) float64, softmax of the logits
    class_names: tuple[str, ...]

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64: the most probable class of each image."""
        return self.probabilities.argmax(1)

    @property
    def names(self) -> list[str]:
        """The most probable class of each image, by name."""
        return [self.class_names[k] for k in self.labels.tolist()]

    def top(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each image, its k most probable classes as (name, probability), best first."""
        values, indices = self.probabilities.topk(min(k, self.probabilities.shape[1]), 1)
        return [[(self.class_names[i], p) for i, p in zip(row_i, row_p)]
                for row_i, row_p in zip(indices.tolist(), values.tolist())]

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, i: int) -> Prediction:
        return Prediction(self.probabilities[i].tolist(), list(self.class_names))

    def with_inverted(self, inverted: list[bool]) -> list[Prediction]:
        """One Prediction per image, each marked with whether its input was inverted."""
        return [Prediction(p.tolist(), list(self.class_names), inv) for p, inv in zip(self.probabilities, inverted)]


def classify(model: Any, images: Any, batch_size: int = 1000) -> Predictions:
    """Predictions for images with a trained network (anything `load_run` takes): a batch
    (N, 28, 28) / (N, 1, 28, 28), or one image or a list of images `to_mnist` takes
    (examples: mnist_cnn.classify)."""
    classifier = load_run(model)
    batch = _as_batch(images)
    with torch.inference_mode():
        logits = classifier.logits(batch, batch_size=batch_size)
    return Predictions(batch, torch.softmax(logits.double(), 1), classifier.class_names)


def _as_batch(images: Any) -> torch.Tensor:
    """Anything `classify` takes -> (N, 1, 28, 28) uint8."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim >= 3 and tuple(images.shape[-2:]) == (28, 28):
        return as_images_u8(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise UsageError("no images given")
        return torch.stack([to_mnist(image) for image in images])
    return to_mnist(images)[None]
