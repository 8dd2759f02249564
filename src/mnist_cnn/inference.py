"""A trained classifier behind one interface, whether it is a run directory or an exported .onnx.

`evaluate`, `predict` and `show` take "RUN", which may be a run directory, its checkpoint.pt or
an ONNX file written by `mnist-cnn export` (class names and config live in its metadata).
Everything downstream only needs `logits(images_u8)` and `class_names`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnist_cnn.errors import CheckpointError, UsageError

# Keys of the ONNX metadata_props that `export` writes and `load_classifier` reads.
META_CLASS_NAMES = "mnist_cnn.class_names"   # JSON list of strings
META_CONFIG = "mnist_cnn.config"             # JSON of the run's TrainConfig
META_VERSION = "mnist_cnn.version"
META_INPUT = "mnist_cnn.input"               # human-readable input contract


@dataclass
class Classifier:
    """Logits for uint8 images from either backend. `model` is the PyTorch module (None for ONNX)."""

    class_names: tuple[str, ...]
    config: dict[str, Any]
    source: Path
    kind: str                                  # "run" or "onnx"
    model: torch.nn.Module | None = None
    run_dir: Path | None = None                # where outputs go for a run; None for an .onnx file
    global_step: int = 0                       # the training step the weights come from (TensorBoard x axis)
    _session: Any = field(default=None, repr=False)

    def logits(self, images_u8: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, C, 28, 28) uint8 -> (N, classes) float32 logits, on the CPU."""
        if self.model is not None:
            from mnist_cnn.train import predict_logits

            return predict_logits(self.model, images_u8, batch_size,
                                  channels_last=bool(self.config.get("channels_last", True))).cpu()
        out = []
        for i in range(0, len(images_u8), batch_size):
            x = images_u8[i:i + batch_size].float().div_(255.0).numpy()  # the training normalisation
            out.append(torch.from_numpy(self._session.run(None, {self._session.get_inputs()[0].name: x})[0]))
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def output_dir(self, name: str) -> Path:
        """Where a command writes its files: RUN/<name>/, or <file>.<name>/ next to an .onnx file."""
        if self.run_dir is not None:
            return self.run_dir / name
        return self.source.with_name(f"{self.source.name}.{name}")


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_classifier(run: str | Path, device: str = "auto") -> Classifier:
    """A run directory / checkpoint.pt (PyTorch) or an .onnx file (ONNX Runtime, CPU)."""
    if is_onnx(run):
        return _load_onnx(Path(run))
    from mnist_cnn.checkpoint import load_checkpoint
    from mnist_cnn.runs import CHECKPOINT, load_trained
    from mnist_cnn.train import select_device

    trained = load_trained(run, select_device(device))
    step = int(load_checkpoint(trained.run_dir / CHECKPOINT).get("global_step", 0))
    return Classifier(trained.class_names, dict(trained.config), trained.run_dir, "run",
                      model=trained.model, run_dir=trained.run_dir, global_step=step)


def _load_onnx(path: Path) -> Classifier:
    if not path.is_file():
        raise UsageError(f"no ONNX file at {path}")
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UsageError("running an .onnx file needs onnx and onnxruntime: pip install 'mnist-cnn[export]'") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnx/onnxruntime raise many types for a damaged file
        raise CheckpointError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:160]})") from None
    if META_CLASS_NAMES not in meta:
        raise CheckpointError(f"{path} has no {META_CLASS_NAMES} metadata; export it with `mnist-cnn export`")
    try:
        class_names = tuple(str(c) for c in json.loads(meta[META_CLASS_NAMES]))
        config = json.loads(meta.get(META_CONFIG, "{}"))
    except ValueError as e:
        raise CheckpointError(f"{path} has unreadable mnist-cnn metadata: {e}") from None
    return Classifier(class_names, config, path, "onnx", _session=session,
                      global_step=int(meta.get("mnist_cnn.global_step", 0)))
