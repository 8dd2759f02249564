"""The model side of `mnist-cnn serve`: a trained model loaded once, answering images from many threads.

Each request decodes and preprocesses its image in its own thread (PIL and NumPy release the
GIL); the forward pass (inference.Classifier, PyTorch or ONNX Runtime) runs under a lock: one
28x28 image costs well under a millisecond, and a shared model behind a lock is safe on any device.
"""
from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mnist_cnn.inference import load_classifier
from mnist_cnn.preprocess import preprocess


class Predictor:
    """A trained model (run directory, .pt or .onnx), loaded once, answering `predict(image_bytes)`
    from many threads."""

    def __init__(self, run: str | Path, device: str = "auto") -> None:
        self.classifier = load_classifier(run, device)
        self.class_names = self.classifier.class_names
        self.run_dir = self.classifier.run_dir or self.classifier.source  # what the console line names
        config = self.classifier.config
        self.info: dict[str, Any] = {
            "run": Path(self.run_dir).name,
            "model": config.get("model", "?"),
            "dataset": config.get("dataset", "?"),
            "status": self.classifier.status,
            "class_names": list(self.class_names),
        }
        model = self.classifier.model
        self.device = next(model.parameters()).device if model is not None else "cpu (ONNX Runtime)"
        self._lock = threading.Lock()

    def predict(self, image_bytes: bytes) -> dict[str, Any]:
        """Encoded image -> the API's JSON answer. Raises ImageError for unusable images."""
        start = time.perf_counter()
        pre = preprocess(image_bytes)                       # (1, 28, 28) uint8, white ink on black
        with self._lock:
            probs = self.classifier.probabilities(pre.image[None])[0]  # (classes,) on the CPU
        best = int(probs.argmax())
        return {
            "prediction": best,
            "label": self.class_names[best],
            "probabilities": [round(float(p), 6) for p in probs],
            "class_names": list(self.class_names),
            "image": png_data_url(pre.image[0]),
            "inverted": pre.inverted,
            "ms": round((time.perf_counter() - start) * 1000, 1),
        }


def png_data_url(image_u8: torch.Tensor) -> str:
    """(H, W) uint8 -> "data:image/png;base64,..." (what the page shows as the network's view)."""
    buf = io.BytesIO()
    Image.fromarray(image_u8.cpu().numpy()).save(buf, format="PNG")  # 2-D uint8: mode "L"
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
