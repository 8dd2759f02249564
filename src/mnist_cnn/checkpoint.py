"""Checkpoints: one file holding everything needed to continue a run bit-exactly.

A checkpoint is a `torch.save`d dict of tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: no pickled code ever runs. Writes are atomic (fileio.atomic_write_bytes),
so a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from mnist_cnn.errors import CheckpointError
from mnist_cnn.fileio import atomic_write_bytes

FORMAT = "mnist-cnn-checkpoint"
# Bump when the layout below changes incompatibly; loading refuses other versions.
VERSION = 1
REQUIRED_KEYS = ("format", "version", "config", "model", "class_names")


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, read-only directory); the old one is intact."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save `state` (tensors, dicts, lists, numbers, strings) with format tags.

    A write that fails (full disk, read-only directory) is a one-line CheckpointError; the
    previous checkpoint at `path`, if any, is left as it was.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
        kept = "; the previous checkpoint is kept" if Path(path).is_file() else ""
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {e.strerror or e}{kept}") from e


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a kill -9 or power loss cut short.

    Only call this while no other process writes into `directory` (e.g. when resuming a run).
    """
    stale = sorted(Path(directory).glob(".*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; any problem is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on the way to our one-line error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, IndexError... for bad files
        raise CheckpointError(f"{path} is not a readable mnist-cnn checkpoint ({_load_failure(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mnist-cnn checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('version')}, this mnist-cnn reads version {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return state


def _load_failure(e: Exception) -> str:
    """A short reason for a file torch.load refused (torch's own text suggests unsafe loading)."""
    text = str(e).strip()
    if "Unsupported global" in text:  # a real pickle of classes or functions
        return "it holds Python objects, not only tensors and plain data; refused, since unpickling them could run code"
    if "Weights only load failed" in text:
        return "truncated, corrupt, or not a checkpoint: not a PyTorch file of tensors and plain data"
    first = text.splitlines()[0].split(". ")[0][:160] if text else ""
    return f"truncated or corrupt: {type(e).__name__}{': ' + first if first else ''}"


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load weights, turning a shape or key mismatch into a one-line CheckpointError."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{source} does not fit this model: {detail[:200]}") from None
