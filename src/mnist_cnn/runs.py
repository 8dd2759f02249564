"""Run directories: where a training run keeps everything, and how other commands find it.

    runs/<name>/
        run.json            status (running / interrupted / failed / complete), times, command
        config.json         the resolved TrainConfig
        environment.json    versions, device, threads, seed
        checkpoint.pt       latest full training state (see checkpoint.py)
        metrics.csv         one row per epoch
        train/ validation/  TensorBoard event files (the lesson's two writers)
        plots/              PNG curves and sample classifications
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from mnist_cnn.checkpoint import atomic_write_bytes, load_checkpoint, load_model_state
from mnist_cnn.errors import CheckpointError, UsageError

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"  # held (flock) by the one process training the run; the OS drops it when that process dies


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def default_run_name(preset: str) -> str:
    return f"{preset}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(out_dir: str | Path, name: str, force: bool = False) -> Path:
    """Make a fresh run directory; an existing one is replaced only with `force`."""
    if not name or name in (".", "..") or Path(name).name != name:
        raise UsageError(f"run name {name!r} must be a plain directory name (use --out for the parent directory)")
    path = Path(out_dir) / name
    if path.exists():
        if not force:
            raise UsageError(
                f"run directory {path} already exists; pass --force to replace it, "
                f"--name to pick another, or --resume {path} to continue it")
        if not (path / "run.json").exists() and any(path.iterdir()):
            raise UsageError(f"{path} exists and is not an mnist-cnn run; refusing to delete it even with --force")
        lock_run(path).close()  # refuses while another process trains in it
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise UsageError(f"cannot create run directory {path}: {e.strerror}") from None
    return path


def lock_run(run_dir: Path) -> IO[str]:
    """Claim `run_dir` for training: a second `train --resume` (or `--force`) of a run that is
    still training is refused instead of writing into it too. Close the file to release."""
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock, as before
        return open(Path(run_dir) / LOCK, "a")
    f = open(Path(run_dir) / LOCK, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UsageError(f"{run_dir} is being trained by another process right now; "
                         "wait for it to finish or stop it (Ctrl-C) first") from None
    return f


def resolve_run(path: str | Path) -> Path:
    """A run directory given as itself or as its checkpoint file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".pt":
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"no run directory at {path}")
    if not (p / CHECKPOINT).is_file():
        raise CheckpointError(f"{p} has no {CHECKPOINT}: not a finished or resumable mnist-cnn run")
    return p


def environment_info(device: torch.device, seed: int) -> dict[str, Any]:
    import numpy

    from mnist_cnn import __version__

    info: dict[str, Any] = {
        "mnist_cnn": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "command": " ".join(sys.argv),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


@dataclass
class TrainedModel:
    model: torch.nn.Module
    config: dict[str, Any]
    class_names: tuple[str, ...]
    run_dir: Path
    status: str


def load_trained(run: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild a run's model from its checkpoint (config + weights), in eval mode."""
    from mnist_cnn.models import create_model, saved_shape

    run_dir = resolve_run(run)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    class_names = tuple(state["class_names"])
    try:
        model = create_model(state["config"]["model"], num_classes=len(class_names), **saved_shape(state["config"]))
    except (UsageError, KeyError, TypeError) as e:  # a checkpoint from a newer or altered mnist-cnn
        raise CheckpointError(f"{run_dir / CHECKPOINT} names a model this mnist-cnn cannot build: {e}") from None
    # A run trained with `ema` is evaluated with its averaged weights, as its validation was.
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    load_model_state(model, weights, run_dir / CHECKPOINT)
    model.to(device).eval()
    status = "unknown"
    if (run_dir / "run.json").is_file():
        status = read_json(run_dir / "run.json").get("status", "unknown")
    return TrainedModel(model, state["config"], class_names, run_dir, status)
