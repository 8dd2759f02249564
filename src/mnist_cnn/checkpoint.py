"""Checkpoint files: one file holding everything needed to continue a run bit-exactly.

A checkpoint is a `torch.save`d dict of tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: no pickled code ever runs. Writes are atomic (fileio.atomic_write_bytes),
so a crash mid-write leaves the previous checkpoint intact. What the dict holds is declared once,
beside the `TrainState` that produces it (trainstate.CHECKPOINT_SCHEMA); loading checks it there.
"""
from __future__ import annotations

import collections
import io
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from mnist_cnn.errors import CheckpointError
from mnist_cnn.fileio import atomic_write_bytes
from mnist_cnn.runs import describe_value
from mnist_cnn.trainstate import CHECKPOINT_SCHEMA, READER_KEYS

FORMAT = "mnist-cnn-checkpoint"
# Bump when CHECKPOINT_SCHEMA changes incompatibly; loading refuses other versions.
VERSION = 1
REQUIRED_KEYS = ("format", "version", *READER_KEYS)


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
    """Load a checkpoint and check its structure (`check_schema`); any problem is one CheckpointError
    line naming the file and the field. Weights are looked at only once loaded into a model (load_model_state)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on the way to our one-line error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, IndexError... for bad files
        raise CheckpointError(f"{path} is not a readable mnist-cnn checkpoint ({_load_failure(path, e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mnist-cnn checkpoint")
    version = state.get("version")
    if not (isinstance(version, int) and version == VERSION):  # a fuzzed file may hold a tensor here
        raise CheckpointError(
            f"{path} has checkpoint format version {describe_value(version)}, this mnist-cnn reads version {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    problem = check_schema(state)
    if problem:
        raise CheckpointError(f"{path} is not a usable mnist-cnn checkpoint: {problem}")
    return state


def _load_failure(path: Path, e: Exception) -> str:
    """A short reason for a file torch.load refused (torch's own text suggests unsafe loading)."""
    text = str(e).strip()
    # torch's wording moves between releases ("Unsupported global: GLOBAL x.Y was not an allowed
    # global"); match it loosely, and otherwise look at the pickle's opcodes ourselves.
    if re.search(r"unsupported global|not an allowed global", text, re.IGNORECASE) or _pickles_objects(path):
        return "it holds Python objects, not only tensors and plain data; refused, since unpickling them could run code"
    if re.search(r"weights only load failed", text, re.IGNORECASE):
        return "truncated, corrupt, or not a checkpoint: not a PyTorch file of tensors and plain data"
    first = text.splitlines()[0].split(". ")[0][:160] if text else ""
    return f"truncated or corrupt: {type(e).__name__}{': ' + first if first else ''}"


# Globals a plain torch.save of tensors, dicts and lists names; anything else is a Python object.
_PLAIN_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset")
_MAX_PICKLE_SCAN = 64 << 20  # bytes; a checkpoint's pickle (not its tensor data) is kilobytes


def _pickles_objects(path: Path) -> bool:
    """Whether the file's pickle names a class or function outside torch's own, read with
    pickletools (which only parses opcodes and runs nothing)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [i for i in z.infolist() if i.filename.endswith("data.pkl") and i.file_size <= _MAX_PICKLE_SCAN]
                data = z.read(names[0]) if names else b""
        else:
            with open(path, "rb") as f:
                data = f.read(_MAX_PICKLE_SCAN)
        with warnings.catch_warnings():  # pickletools warns about odd escapes in garbage
            warnings.simplefilter("ignore")
            return any(not name.startswith(_PLAIN_GLOBALS) for name in _pickle_globals(data))
    except Exception:  # a truncated or non-pickle file: not evidence of objects
        return False


def _pickle_globals(data: bytes):
    """The module.name of each class or function a pickle refers to, streamed (stops at the first
    bad opcode, so a truncated file yields what precedes the cut)."""
    strings: collections.deque[str] = collections.deque(maxlen=2)  # STACK_GLOBAL's two operands
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if isinstance(arg, str):
            strings.append(arg)
        if op.name in ("GLOBAL", "INST"):
            yield arg.replace(" ", ".")
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            yield f"{strings[-2]}.{strings[-1]}"


def check_schema(state: dict[str, Any]) -> str | None:
    """The first field of a loaded checkpoint that readers could not use, as "field X is ...
    (must be ...)"; None when every present field has the right type and shape."""
    for name, field in CHECKPOINT_SCHEMA.items():
        if name in state and not _passes(field.check, state[name]):
            return f"field {name!r} is {describe_value(state[name])} (must be {field.expected})"
    if "step_loss" in state and "step_correct" in state and len(state["step_loss"]) != len(state["step_correct"]):
        return "fields 'step_loss' and 'step_correct' have different lengths"
    return None


def _passes(ok: Any, value: Any) -> bool:
    try:
        return bool(ok(value))
    except Exception:  # a structure odd enough to break the test itself fails it
        return False
