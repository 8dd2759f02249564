"""The model side of `mnist-cnn serve`: a run loaded once, answering images from many threads.

Each request decodes and preprocesses its image in its own thread (PIL and NumPy release the
GIL); the forward pass runs under a lock: one 28x28 image costs well under a millisecond, and a
shared module behind a lock is safe on any device.
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

from mnist_cnn.preprocess import preprocess
from mnist_cnn.runs import load_trained
from mnist_cnn.inference import select_device, to_input


class Predictor:
    """A trained run, loaded once, answering `predict(image_bytes)` from many threads."""

    def __init__(self, run: str | Path, device: str = "auto") -> None:
        trained = load_trained(run, select_device(device))
        self.model = trained.model
        self.class_names = trained.class_names
        self.run_dir = trained.run_dir
        self.info: dict[str, Any] = {
            "run": trained.run_dir.name,
            "model": trained.config.get("model", "?"),
            "dataset": trained.config.get("dataset", "?"),
            "status": trained.status,
            "class_names": list(trained.class_names),
        }
        self.device = next(self.model.parameters()).device
        self._lock = threading.Lock()

    def predict(self, image_bytes: bytes) -> dict[str, Any]:
        """Encoded image -> the API's JSON answer. Raises ImageError for unusable images."""
        start = time.perf_counter()
        pre = preprocess(image_bytes)                       # (1, 28, 28) uint8, white ink on black
        x = to_input(pre.image[None].to(self.device), channels_last=False)  # (1, 1, 28, 28) float
        with self._lock, torch.inference_mode():
            probs = torch.softmax(self.model(x).float(), dim=1)[0].cpu()  # the one host sync
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
