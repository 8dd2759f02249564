"""The model side of `mnist-cnn serve`: a classifier loaded once, answering encoded images.

The model comes from the shared loader (a run directory or an .onnx file). On the CPU its forward
pass runs in ONNX Runtime when that is installed: a run's network is exported in memory at start
and checked against PyTorch (same classes on random images, logits within export's tolerance),
else PyTorch runs it. For one 28x28 image ONNX Runtime takes a fraction of PyTorch's per-call
overhead. This module adds what the API returns around the forward pass: probabilities, the
label, and on request the 28x28 view the network saw as a PNG data URL. `prepare` runs in worker
threads, a few at a time (the app's limiter); `probabilities` runs on batches gathered across
requests (batching.py).
"""
from __future__ import annotations

import base64
import copy
import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from mnist_cnn.inference import Classifier, load_classifier, to_input_numpy
from mnist_cnn.preprocess import preprocess


class Predictor:
    """A classifier and its description: `prepare` an image, `probabilities` of a batch, `answer`."""

    def __init__(self, run: str | Path, device: str = "auto") -> None:
        self.classifier: Classifier = load_classifier(run, device)
        c = self.classifier
        self.class_names = list(c.class_names)
        self.source = c.run_dir or c.source
        self.forward = onnx_runtime_forward(c) if c.model is not None else None
        on_cpu = c.model is None or self.forward is not None
        self.forward = self.forward or (lambda images: c.logits(images).numpy())
        self.device = "cpu (ONNX Runtime)" if on_cpu else next(c.model.parameters()).device
        self.names_json = json.dumps(self.class_names)
        self.labels_json = [json.dumps(name) for name in self.class_names]
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
            logits = self.forward(images_u8).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (exp / exp.sum(axis=1, keepdims=True)).tolist()

    def prepare(self, data: bytes, view: bool = False) -> Prepared:
        """Encoded image -> the network's input and, with `view`, the page's view of it as a PNG.

        Raises ImageError for an unusable image."""
        start = time.perf_counter()
        seen = preprocess(data)                  # (1, 28, 28) uint8, white ink on black
        return Prepared(seen.image, seen.inverted, png_data_url(seen.image[0]) if view else None, start)

    def answer(self, prepared: Prepared, probs: list[float]) -> dict[str, Any]:
        best = max(range(len(probs)), key=probs.__getitem__)
        out = {
            "prediction": best,
            "label": self.class_names[best],
            "probabilities": [round(p, 6) for p in probs],
            "class_names": self.class_names,
            "inverted": prepared.inverted,
            "ms": round((time.perf_counter() - prepared.start) * 1000, 1),
        }
        if prepared.image_url is not None:
            out["image"] = prepared.image_url
        return out

    def answer_json(self, prepared: Prepared, probs: list[float]) -> str:
        """`answer` as JSON text, written directly: the class names are encoded once at start and
        the numbers formatted here, which costs a fraction of json.dumps on the dict."""
        best = max(range(len(probs)), key=probs.__getitem__)
        ms = round((time.perf_counter() - prepared.start) * 1000, 1)
        image = "" if prepared.image_url is None else f', "image": "{prepared.image_url}"'
        return (f'{{"prediction": {best}, "label": {self.labels_json[best]}, '
                f'"probabilities": [{", ".join(repr(round(p, 6)) for p in probs)}], '
                f'"class_names": {self.names_json}, "inverted": {"true" if prepared.inverted else "false"}, '
                f'"ms": {ms!r}{image}}}')


@dataclass
class Prepared:
    image: torch.Tensor      # (1, 28, 28) uint8, the network's input
    inverted: bool
    image_url: str | None    # the same as a PNG data URL, when the client asked for it
    start: float             # perf_counter() when its request's work began


def png_data_url(image_u8: torch.Tensor) -> str:
    """(H, W) uint8 -> "data:image/png;base64,..." (what the page shows as the network's view)."""
    buf = io.BytesIO()
    # 2-D uint8 is mode "L"; level 1 compresses 784 bytes as well as 9 does, faster.
    Image.fromarray(image_u8.numpy()).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def onnx_runtime_forward(classifier: Classifier, checks: int = 256) -> Callable[[torch.Tensor], np.ndarray] | None:
    """(N, C, 28, 28) uint8 -> (N, classes) float32 logits through ONNX Runtime, for a run whose
    model is on the CPU; None when onnx/onnxruntime are missing, the model is on a GPU, the export
    fails, or it disagrees with PyTorch on `checks` random images (then PyTorch serves)."""
    model = classifier.model
    if model is None or next(model.parameters()).device.type != "cpu":
        return None
    try:
        import onnxruntime as ort

        from mnist_cnn.inference import _onnx_options
    except ImportError:
        return None
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 1
    probe = torch.randint(0, 256, (checks, channels, 28, 28), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():   # the TorchScript exporter is "legacy"; it needs no onnxscript
            warnings.simplefilter("ignore")
            torch.onnx.export(copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval(), (torch.zeros(1, channels, 28, 28),), buf, dynamo=False,
                              input_names=["images"], output_names=["logits"], opset_version=17,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        session = ort.InferenceSession(buf.getvalue(), _onnx_options(ort), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": to_input_numpy(probe)})[0]
    except Exception:  # noqa: BLE001 (any exporter or runtime failure: PyTorch serves instead)
        return None
    from mnist_cnn.export import LOGIT_TOLERANCE

    want = classifier.logits(probe).numpy()
    if not (np.array_equal(got.argmax(1), want.argmax(1)) and np.abs(got - want).max() <= LOGIT_TOLERANCE):
        return None
    return lambda images: session.run(None, {"images": to_input_numpy(images)})[0]
