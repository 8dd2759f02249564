"""The model side of `mnist-cnn serve`: a classifier loaded once, answering encoded images.

The forward pass is `Classifier.logits` (the shared loader: a run directory or an .onnx file);
this module adds what the API returns around it: probabilities, the label, and the 28x28 view the
network saw as a PNG data URL. `prepare` runs in worker threads, a few at a time (the app's
limiter); `probabilities` runs on batches gathered across requests (batching.py).
"""
from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mnist_cnn.inference import Classifier, load_classifier
from mnist_cnn.preprocess import preprocess


class Predictor:
    """A classifier and its description: `prepare` an image, `probabilities` of a batch, `answer`."""

    def __init__(self, run: str | Path, device: str = "auto") -> None:
        self.classifier: Classifier = load_classifier(run, device)
        c = self.classifier
        self.class_names = list(c.class_names)
        self.source = c.run_dir or c.source
        self.device = next(c.model.parameters()).device if c.model is not None else "cpu (ONNX Runtime)"
        self.info: dict[str, Any] = {
            "run": self.source.name,
            "model": c.config.get("model", "?"),
            "dataset": c.config.get("dataset", "?"),
            "status": c.status if c.kind == "run" else "exported",
            "class_names": self.class_names,
        }

    def probabilities(self, images_u8: torch.Tensor) -> list[list[float]]:
        """(N, 1, 28, 28) uint8 -> N rows of class probabilities, each summing to 1."""
        with torch.inference_mode():
            return torch.softmax(self.classifier.logits(images_u8).float(), dim=1).tolist()

    def prepare(self, data: bytes) -> Prepared:
        """Encoded image -> the network's input and the page's view of it (decode, preprocess, PNG).

        Raises ImageError for an unusable image."""
        start = time.perf_counter()
        view = preprocess(data)                  # (1, 28, 28) uint8, white ink on black
        return Prepared(view.image, view.inverted, png_data_url(view.image[0]), start)

    def answer(self, prepared: Prepared, probs: list[float]) -> dict[str, Any]:
        best = max(range(len(probs)), key=probs.__getitem__)
        return {
            "prediction": best,
            "label": self.class_names[best],
            "probabilities": [round(p, 6) for p in probs],
            "class_names": self.class_names,
            "image": prepared.image_url,
            "inverted": prepared.inverted,
            "ms": round((time.perf_counter() - prepared.start) * 1000, 1),
        }


@dataclass
class Prepared:
    image: torch.Tensor      # (1, 28, 28) uint8, the network's input
    inverted: bool
    image_url: str           # the same as a PNG data URL
    start: float             # perf_counter() when its request's work began


def png_data_url(image_u8: torch.Tensor) -> str:
    """(H, W) uint8 -> "data:image/png;base64,..." (what the page shows as the network's view)."""
    buf = io.BytesIO()
    # 2-D uint8 is mode "L"; level 1 compresses 784 bytes as well as 9 does, faster.
    Image.fromarray(image_u8.numpy()).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
