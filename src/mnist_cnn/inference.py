"""Inference shared by every command: device choice, input scaling, batched logits, split
evaluation, and one way to load a trained model (a run directory, a named .pt checkpoint, or an
.onnx file written by `mnist-cnn export`) behind one `Classifier` interface.

Training, evaluate, predict, export, show, serve and bench use these; none of them imports the
training loop for inference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.errors import CheckpointError, UsageError, escape_controls
from mnist_cnn.models import Ensemble, create_model, load_model_state, saved_shape
from mnist_cnn.runs import CHECKPOINT, ensemble_config, is_ensemble_run, member_dirs, read_run_info
from mnist_cnn import precision

PIXEL_SCALE = 255.0  # uint8 pixel -> [0, 1]: the lesson's input scaling, here and nowhere else


def select_device(name: str) -> torch.device:
    """"auto" (CUDA when there is a GPU, else CPU), "cpu" or "cuda"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


def to_input(images_u8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(N, C, 28, 28) uint8 pixels -> float32 in [0, 1], the lesson's input scaling."""
    x = images_u8.float().div_(PIXEL_SCALE)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_input_numpy(images_u8: np.ndarray | torch.Tensor) -> np.ndarray:
    """The same scaling as `to_input` for ONNX Runtime: uint8 -> float32 numpy in [0, 1]."""
    return np.asarray(images_u8, dtype=np.float32) / np.float32(PIXEL_SCALE)


@torch.inference_mode()
def predict_logits(model: nn.Module, images_u8: torch.Tensor, batch_size: int = 1000,
                   channels_last: bool = True) -> torch.Tensor:
    """Logits (N, classes) float32 for uint8 images (N, C, 28, 28), on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(to_input(images_u8[i:i + batch_size].to(device), channels_last)).float()
           for i in range(0, len(images_u8), batch_size)]
    model.train(was_training)
    if not out:
        return torch.empty(0, 0, device=device)
    return torch.cat(out)


def loss_and_accuracy(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
                   channels_last: bool = True) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` over a whole split of uint8 images."""
    logits = predict_logits(model, images_u8, batch_size, channels_last)
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


# Keys of the ONNX metadata_props that `export` writes and `load_classifier` reads.
META_CLASS_NAMES = "mnist_cnn.class_names"   # JSON list of strings
META_CONFIG = "mnist_cnn.config"             # JSON of the run's TrainConfig
META_VERSION = "mnist_cnn.version"
META_INPUT = "mnist_cnn.input"               # human-readable input contract


@dataclass
class Classifier:
    """A trained model behind one interface, whichever file it came from. `model` is the PyTorch
    module (None for ONNX); `logits`/`probabilities` take uint8 images on any backend."""

    class_names: tuple[str, ...]
    config: dict[str, Any]
    source: Path                               # the file or run directory named by the user
    kind: str                                  # "run" (a .pt checkpoint) or "onnx"
    model: torch.nn.Module | None = None
    run_dir: Path | None = None                # the run a checkpoint.pt belongs to; None for other files
    global_step: int = 0                       # the training step the weights come from (TensorBoard x axis)
    status: str = "unknown"                    # run.json's status for a run, else "unknown"
    bf16: bool = False                         # run under bf16 autocast (precision.inference_bf16)
    members: tuple["Classifier", ...] = ()     # an ensemble run's members, each alone (`model` averages them)
    _session: Any = field(default=None, repr=False)

    def logits(self, images_u8: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, C, 28, 28) uint8 -> (N, classes) float32 logits, on the CPU."""
        if self.model is not None:
            with precision.autocast(next(self.model.parameters()).device, self.bf16):
                return predict_logits(self.model, images_u8, batch_size,
                                      channels_last=bool(self.config.get("channels_last", True))).cpu()
        out = []
        for i in range(0, len(images_u8), batch_size):
            x = to_input_numpy(images_u8[i:i + batch_size])
            out.append(torch.from_numpy(self._session.run(None, {self._session.get_inputs()[0].name: x})[0]))
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def probabilities(self, images_u8: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, C, 28, 28) uint8 -> (N, classes) float32 softmax probabilities, on the CPU."""
        return torch.softmax(self.logits(images_u8, batch_size), dim=1)

    def output_dir(self, name: str) -> Path:
        """Where a command writes its files: RUN/<name>/ for a run, else <file>.<name>/ next to the file."""
        if self.run_dir is not None:
            return self.run_dir / name
        return self.source.with_name(f"{self.source.name}.{name}")


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_classifier(path: str | Path, device: str = "auto") -> Classifier:
    """The one way to load a trained model: a run directory (its checkpoint.pt; an ensemble run's
    members as one model), a named .pt checkpoint (that file, whatever its name), or an .onnx file
    from `mnist-cnn export` (CPU).
    Any problem is one CheckpointError/UsageError line."""
    path = Path(path)
    if is_onnx(path):
        return _load_onnx(path)
    if is_ensemble_run(path):
        return _load_ensemble(path, device)
    if path.is_dir():
        checkpoint = path / CHECKPOINT
        if not checkpoint.is_file():
            raise CheckpointError(f"{path} has no {CHECKPOINT}: not a finished or resumable mnist-cnn run")
    elif path.is_file() and path.suffix.lower() in (".pt", ".pth"):
        checkpoint = path
    elif path.is_file():
        raise UsageError(f"{path} is not a run directory, a .pt checkpoint or an .onnx file")
    else:
        raise UsageError(f"no run directory, checkpoint or .onnx file at {path}")
    torch_device = select_device(device)
    state = load_checkpoint(checkpoint, map_location=torch_device)  # schema-checked, read once
    model = _build_model(state, checkpoint).to(torch_device).eval()
    # Outputs and status belong to the run only when the file is the run's own checkpoint.
    run_dir = checkpoint.parent if checkpoint.name == CHECKPOINT else None
    status = read_run_info(run_dir)["status"] if run_dir is not None else "unknown"
    return Classifier(tuple(escape_controls(c) for c in state["class_names"]), dict(state["config"]), path, "run",
                      model=model, run_dir=run_dir, global_step=int(state.get("global_step", 0)), status=status,
                      bf16=precision.inference_bf16(dict(state["config"]), torch_device))


def _load_ensemble(run_dir: Path, device: str) -> Classifier:
    """An ensemble run (`train --members K`) as one Classifier: every member with a checkpoint, their
    probabilities averaged by `Ensemble`; `members` keeps each one alone."""
    config = ensemble_config(run_dir)
    present = [d for d in member_dirs(run_dir, config.members) if (d / CHECKPOINT).is_file()]
    if not present:
        raise CheckpointError(f"{run_dir} is an ensemble of {config.members} with no member trained yet; "
                              f"continue it with: mnist-cnn train --resume {run_dir}")
    members = tuple(load_classifier(d, device) for d in present)
    first = members[0]
    for m in members[1:]:
        if m.class_names != first.class_names:
            raise CheckpointError(f"{m.source} predicts classes {', '.join(m.class_names)}, but {first.source} "
                                  f"predicts {', '.join(first.class_names)}; {run_dir} is not one ensemble")
    return Classifier(first.class_names, dict(first.config, members=config.members, seed=config.seed), run_dir, "run",
                      model=Ensemble([m.model for m in members]).eval(), run_dir=run_dir,
                      global_step=sum(m.global_step for m in members), status=read_run_info(run_dir)["status"],
                      bf16=first.bf16, members=members)


def _build_model(state: dict[str, Any], source: Path) -> nn.Module:
    if "model" not in state["config"]:
        raise CheckpointError(f"{source} names no model in its config; it cannot be rebuilt")
    try:
        model = create_model(state["config"]["model"], num_classes=len(state["class_names"]), **saved_shape(state["config"]))
    except UsageError as e:  # a checkpoint from a newer or altered mnist-cnn
        raise CheckpointError(f"{source} names a model this mnist-cnn cannot build: {e}") from None
    # A run trained with `ema` is evaluated with its averaged weights, as its validation was.
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    load_model_state(model, weights, source)
    return model


def _onnx_options(ort):
    """ONNX Runtime threads follow torch's thread count (--threads, or 1 per serve worker), so an
    .onnx model competes for the cores no more than the .pt one would: left alone, every session
    starts a thread per core, and N serve workers would run N x cores threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return options


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
        session = ort.InferenceSession(proto.SerializeToString(), _onnx_options(ort),
                                       providers=["CPUExecutionProvider"])
    except Exception as e:  # onnx/onnxruntime raise many types for a damaged file
        raise CheckpointError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:160]})") from None
    class_names, config, global_step = _onnx_metadata(meta, path)
    _check_onnx_fits(session, len(class_names), path)
    return Classifier(class_names, config, path, "onnx", _session=session, global_step=global_step)


def _onnx_metadata(meta: dict[str, str], path: Path) -> tuple[tuple[str, ...], dict[str, Any], int]:
    """(class names, config, global step) from an .onnx file's mnist-cnn metadata, checked."""
    if META_CLASS_NAMES not in meta:
        raise CheckpointError(f"{path} has no {META_CLASS_NAMES} metadata; export it with `mnist-cnn export`")
    try:
        class_names = json.loads(meta[META_CLASS_NAMES])
        config = json.loads(meta.get(META_CONFIG, "{}"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} has unreadable mnist-cnn metadata: {escape_controls(str(e))[:160]}") from None
    if not isinstance(class_names, list) or not class_names or not all(isinstance(c, str) for c in class_names):
        raise CheckpointError(f"{path} has bad {META_CLASS_NAMES} metadata: {_preview(meta[META_CLASS_NAMES])} "
                              "(must be a non-empty JSON list of strings)")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} has bad {META_CONFIG} metadata: {_preview(meta[META_CONFIG])} (must be a JSON object)")
    step = meta.get("mnist_cnn.global_step", "0")
    if not (step.isascii() and step.isdigit()):
        raise CheckpointError(f"{path} has bad mnist_cnn.global_step metadata: {_preview(step)} (must be a whole number)")
    return tuple(escape_controls(c) for c in class_names), config, int(step)


def _check_onnx_fits(session: Any, num_classes: int, path: Path) -> None:
    """One input of (batch, 1, 28, 28) and one output of (batch, classes), or a one-line error."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise CheckpointError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; an mnist-cnn model "
                              "has one of each (images -> logits)")
    shape_in, shape_out = list(inputs[0].shape), list(outputs[0].shape)
    if len(shape_in) != 4 or shape_in[1:] != [1, 28, 28]:
        raise CheckpointError(f"{path} takes input of shape {_dims(shape_in)}; mnist-cnn feeds (batch, 1, 28, 28)")
    if len(shape_out) != 2 or (isinstance(shape_out[1], int) and shape_out[1] != num_classes):
        raise CheckpointError(f"{path} gives output of shape {_dims(shape_out)} for {num_classes} class names; "
                              f"expected (batch, {num_classes})")


def _dims(shape: list[Any]) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else "batch" for d in shape) + ")"


def _preview(text: str) -> str:
    text = escape_controls(text)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def load_run(model: Any, device: str = "cpu") -> Classifier:
    """A Classifier from what a user holds: a loaded Classifier (as it is), `train`'s result (its
    run directory), or a path `load_classifier` takes (a run directory, a .pt, an .onnx file)."""
    if isinstance(model, Classifier):
        return model
    if hasattr(model, "run_dir") and hasattr(model, "history"):  # train's TrainResult
        model = model.run_dir
    return load_classifier(model, device)
