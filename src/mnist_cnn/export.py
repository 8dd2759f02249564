"""Exporting a trained model to ONNX, verified against PyTorch before it is called a success.

The .onnx file takes `images` (batch, C, 28, 28) float32 in [0, 1] (uint8 pixels / 255, the
training normalisation) with a dynamic batch dimension and returns `logits` (batch, classes).
Its metadata_props carry the class names and the run's config, so `mnist-cnn predict` and
`mnist-cnn evaluate` run on the file alone (see inference.py).

The file is written next to its destination, checked with ONNX Runtime, and only then moved
into place: a model that disagrees with PyTorch on any image's argmax is never left behind.
"""
from __future__ import annotations

import copy
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mnist_cnn.errors import MnistCnnError, UsageError
from mnist_cnn.fileio import atomic_write_bytes
from mnist_cnn.inference import META_CLASS_NAMES, META_CONFIG, META_INPUT, META_VERSION, load_classifier, to_input
from mnist_cnn.runs import CHECKPOINT, load_split
from mnist_cnn.version import __version__

OPSET = 17                   # supported by every onnxruntime since 1.11
LOGIT_TOLERANCE = 1e-3       # max |logit difference| accepted; float32 rounding gives ~1e-5
RANDOM_CHECK_IMAGES = 512    # parity sample when a bare model is exported without check images


class ExportError(MnistCnnError):
    """The exported model does not reproduce PyTorch, or could not be written."""


@dataclass
class ExportReport:
    path: Path
    images_checked: int          # images run through both PyTorch and ONNX Runtime
    check_data: str              # what they were ("mnist test split", "random uniform", ...)
    argmax_mismatches: int       # images whose predicted class differs (must be 0)
    max_abs_logit_diff: float    # over every image and class
    onnx_accuracy: float | None  # on the check images when labels are known
    torch_accuracy: float | None
    seconds: float               # export + check, wall time
    bytes: int


def default_onnx_path(run: str | Path) -> Path:
    """RUN/model.onnx for a run directory or its checkpoint.pt; X.onnx beside any other X.pt."""
    path = Path(run)
    if path.is_dir():
        return path / "model.onnx"
    return path.with_name("model.onnx") if path.name == CHECKPOINT else path.with_suffix(".onnx")


@dataclass
class _Source:
    """What gets exported, and the images its parity check runs on."""

    model: nn.Module             # a CPU float32 copy in the default memory layout: what ORT runs
    class_names: list[str]
    config: dict[str, Any]
    global_step: int
    in_channels: int
    check_images: torch.Tensor   # (N, C, 28, 28) uint8
    check_labels: torch.Tensor | None
    check_data: str


def export_onnx(run_or_model: str | Path | nn.Module, path: str | Path, *, class_names: Sequence[str] | None = None,
                config: dict[str, Any] | None = None, check_images: torch.Tensor | None = None,
                check_labels: torch.Tensor | None = None, data_dir: str | None = None, opset: int = OPSET,
                force: bool = False) -> ExportReport:
    """Export a run (directory / checkpoint.pt) or a model to ONNX at `path`, then verify it.

    A run is checked on the full test split of its data set; a bare model on `check_images`
    ((N, C, 28, 28) uint8) or, lacking them, RANDOM_CHECK_IMAGES random images. Raises ExportError
    (and leaves no file) unless every argmax matches and logits agree within LOGIT_TOLERANCE.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("ONNX export needs onnx and onnxruntime: pip install 'mnist-cnn[export]'") from None
    started = time.time()
    path = _check_output_path(Path(path), force)
    src = _source(run_or_model, class_names, config, check_images, check_labels, data_dir)
    try:
        data = _onnx_bytes(src, path, opset)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        mismatches, max_diff, onnx_correct, torch_correct = _parity(session, src)
        n = len(src.check_images)
        if mismatches or not max_diff <= LOGIT_TOLERANCE:  # `not <=` also catches NaN
            raise ExportError(f"ONNX model disagrees with PyTorch: {mismatches} of {n} predicted classes differ, "
                              f"max |logit difference| {max_diff:.3g} (limit {LOGIT_TOLERANCE}); nothing written")
        atomic_write_bytes(path, data)
    except MnistCnnError:
        raise
    except Exception as e:  # exporter / checker / runtime failures: one line, not a traceback
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    accuracy = (lambda c: c / n if src.check_labels is not None else None)
    return ExportReport(path, n, src.check_data, mismatches, max_diff, accuracy(onnx_correct), accuracy(torch_correct),
                        time.time() - started, len(data))


def _check_output_path(path: Path, force: bool) -> Path:
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"the output file should end in .onnx: {path}")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to replace it")
    if not path.parent.is_dir():
        raise UsageError(f"no directory {path.parent} to write {path.name} into")
    return path


def _source(run_or_model: str | Path | nn.Module, class_names: Sequence[str] | None, config: dict[str, Any] | None,
            check_images: torch.Tensor | None, check_labels: torch.Tensor | None, data_dir: str | None) -> _Source:
    """The model to export (a run's through the one loader) and its check images."""
    check_data, global_step = "given images", 0
    if isinstance(run_or_model, nn.Module):
        model, config = run_or_model, dict(config or {})
    else:
        classifier = load_classifier(run_or_model, "cpu")
        if classifier.model is None:
            raise UsageError(f"{run_or_model} is already an ONNX file")
        model, config, global_step = classifier.model, classifier.config, classifier.global_step
        class_names = classifier.class_names
        if check_images is None:
            test = load_split(config, "test", data_dir)
            check_images, check_labels = test.images, test.labels
            check_data = f"{config.get('dataset', '?')} test split"
    model = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval()
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    in_channels = first_conv.in_channels if first_conv is not None else 1
    if check_images is None:
        g = torch.Generator().manual_seed(0)
        check_images = torch.randint(0, 256, (RANDOM_CHECK_IMAGES, in_channels, 28, 28), generator=g, dtype=torch.uint8)
        check_data = "random uniform images"
    with torch.inference_mode():
        num_classes = model(torch.zeros(1, in_channels, 28, 28)).shape[1]
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(f"{len(names)} class names for a model with {num_classes} outputs")
    return _Source(model, names, config, global_step, in_channels, check_images, check_labels, check_data)


def _onnx_bytes(src: _Source, path: Path, opset: int) -> bytes:
    """The exported graph with mnist-cnn's metadata, checked by onnx's checker."""
    import onnx  # the `export` extra: imported when used

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 warns that the TorchScript exporter is legacy; the dynamo one needs
            # onnxscript, which we do not depend on. Both give the same graph for these nets.
            warnings.simplefilter("ignore")
            torch.onnx.export(src.model, (torch.zeros(1, src.in_channels, 28, 28),), str(tmp), dynamo=False,
                              input_names=["images"], output_names=["logits"], opset_version=opset,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        META_CLASS_NAMES: json.dumps(src.class_names),
        META_CONFIG: json.dumps(src.config),
        META_VERSION: __version__,
        META_INPUT: f"images: (batch, {src.in_channels}, 28, 28) float32 = uint8 pixels / 255, white ink on black",
        "mnist_cnn.global_step": str(src.global_step),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _parity(session: Any, src: _Source, batch: int = 1000) -> tuple[int, float, int, int]:
    """(argmax mismatches, max |logit diff|, ONNX correct, PyTorch correct) over the check images
    (10k images: ~1 s each side on a CPU)."""
    mismatches, max_diff, onnx_correct, torch_correct = 0, 0.0, 0, 0
    for i in range(0, len(src.check_images), batch):
        x = to_input(src.check_images[i:i + batch], channels_last=False)
        with torch.inference_mode():
            reference = src.model(x)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        mismatches += int((got.argmax(1) != reference.argmax(1)).sum())
        max_diff = max(max_diff, float((got - reference).abs().max()))
        if src.check_labels is not None:
            labels = src.check_labels[i:i + batch].cpu()
            onnx_correct += int((got.argmax(1) == labels).sum())
            torch_correct += int((reference.argmax(1) == labels).sum())
    return mismatches, max_diff, onnx_correct, torch_correct
