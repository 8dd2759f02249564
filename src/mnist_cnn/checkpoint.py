"""Checkpoints: one file holding everything needed to continue a run bit-exactly.

A checkpoint is a `torch.save`d dict of tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: no pickled code ever runs. Writes are atomic (fileio.atomic_write_bytes),
so a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import pickletools
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from mnist_cnn.errors import CheckpointError
from mnist_cnn.fileio import atomic_write_bytes, read_json

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
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {_short(state.get('version'))}, this mnist-cnn reads version {VERSION}")
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


def _all_finite(tensors: dict[str, Any]) -> bool:
    return all(torch.isfinite(t).all() for t in tensors.values() if isinstance(t, torch.Tensor) and t.is_floating_point())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _str_keyed_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


# Every field a reader (evaluate, predict, export, show, serve, ensemble, train --resume) uses:
# name -> (what it must be, test). Optional fields are checked when present; resume checks that
# the ones it needs are there (trainstate.RESUME_KEYS).
_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "config": ("a dict of settings: model and dataset strings, validation_size an int, channels_last a bool",
               lambda v: _config_ok(v)),
    "class_names": ("a non-empty list of strings",
                    lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(c, str) for c in v)),
    "model": ("a dict of tensors", _tensor_dict),
    "ema": ("a dict of tensors or None", lambda v: v is None or _tensor_dict(v)),
    "optimizer": ("a dict with 'state' and 'param_groups'",
                  lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)
                  and all(isinstance(g, dict) for g in v["param_groups"])),
    "schedule": ("a dict or None", lambda v: v is None or _str_keyed_dict(v)),
    "rng": ("a dict of RNG states", lambda v: _rng_ok(v)),
    "history": ("a list of per-epoch records (dicts of epoch, seconds, lr, losses and accuracies)",
                lambda v: isinstance(v, list) and all(_epoch_record_ok(r) for r in v)),
    "epoch": ("a non-negative int", lambda v: _is_int(v) and v >= 0),
    "step_in_epoch": ("a non-negative int", lambda v: _is_int(v) and v >= 0),
    "global_step": ("a non-negative int", lambda v: _is_int(v) and v >= 0),
    "epoch_seconds": ("a number", _is_number),
    "step_loss": ("a 1-D floating-point tensor", lambda v: isinstance(v, torch.Tensor) and v.ndim == 1 and v.is_floating_point()),
    "step_correct": ("a 1-D integer tensor",
                     lambda v: isinstance(v, torch.Tensor) and v.ndim == 1 and not v.is_floating_point() and v.dtype != torch.bool),
}


def _config_ok(config: Any) -> bool:
    """The settings that evaluate, predict, show, export and ensemble read without the typed
    TrainConfig (resume parses the whole config with config.from_dict)."""
    if not _str_keyed_dict(config):
        return False
    return (isinstance(config.get("model", ""), str) and isinstance(config.get("dataset", ""), str) and isinstance(config.get("data_dir", ""), (str, type(None)))
            and _is_int(config.get("validation_size", 0)) and isinstance(config.get("channels_last", True), bool)
            and _is_number(config.get("epochs", 0)))


def _epoch_record_ok(record: Any) -> bool:
    from mnist_cnn.runlog import EpochRecord

    names = [f.name for f in dataclasses.fields(EpochRecord)]
    return (isinstance(record, dict) and set(record) == set(names) and _is_int(record["epoch"])
            and all(_is_number(record[n]) for n in names))


def _rng_ok(rng: Any) -> bool:
    """The RNG streams resume restores (trainstate.restore_global_rng_state): generator states of
    torch's own size, numpy's MT19937 (624 words) and Python's (625 words)."""
    if not isinstance(rng, dict):
        return False
    generator_bytes = torch.get_rng_state().numel()

    def generator(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == (generator_bytes,)

    n, py = rng.get("numpy"), rng.get("python")
    return (generator(rng.get("torch")) and generator(rng.get("data_order")) and generator(rng.get("data_order_epoch_start"))
            and isinstance(rng.get("cuda"), (list, tuple)) and all(isinstance(t, torch.Tensor) for t in rng["cuda"])
            and isinstance(n, dict) and isinstance(n.get("key"), torch.Tensor) and n["key"].shape == (624,)
            and _is_int(n.get("pos")) and 0 <= n["pos"] <= 624 and _is_int(n.get("has_gauss"))
            and _is_number(n.get("cached_gaussian"))
            and isinstance(py, (list, tuple)) and len(py) == 3 and _is_int(py[0])
            and isinstance(py[1], (list, tuple)) and len(py[1]) == 625 and all(_is_int(w) and 0 <= w < 2**32 for w in py[1])
            and (py[2] is None or _is_number(py[2])))


def check_schema(state: dict[str, Any]) -> str | None:
    """The first field of a loaded checkpoint that readers could not use, as "field X is ...
    (must be ...)"; None when every present field has the right type and shape."""
    for name, (expected, ok) in _FIELDS.items():
        if name in state and not _passes(ok, state[name]):
            return f"field {name!r} is {_describe(state[name])} (must be {expected})"
    if "step_loss" in state and "step_correct" in state and len(state["step_loss"]) != len(state["step_correct"]):
        return "fields 'step_loss' and 'step_correct' have different lengths"
    return None


def _passes(ok: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(ok(value))
    except Exception:  # a structure odd enough to break the test itself fails it
        return False


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (dict, list, tuple)):
        return f"a {_type_name(value)} of {len(value)} item{'s' if len(value) != 1 else ''}"
    return f"{_short(value)} ({_type_name(value)})"


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """run.json of `run_dir`, checked: a JSON object whose "status" is a string. A run without one
    (an older layout, a copied checkpoint) reads as {"status": "unknown"}; a malformed one is
    one CheckpointError line."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {"status": "unknown"}
    info = read_json(path)
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} is not an mnist-cnn run.json: it holds {_describe(info)}, not a JSON object")
    if not isinstance(info.get("status"), str):
        raise CheckpointError(f"{path} is not an mnist-cnn run.json: field 'status' is "
                              f"{_describe(info.get('status')) if 'status' in info else 'missing'} (must be a string)")
    return info


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load weights, turning a shape or key mismatch into a one-line CheckpointError; warn on
    stderr when they are not finite.

    The shapes are checked (by load_state_dict) before any value is looked at: a small file can
    hold a tensor that claims 10^9 elements over one stored value (`expand`), which the finite
    check would materialise; once loaded, every tensor is the model's own size."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = next((line.strip() for line in lines[1:] if line.strip()), lines[0] if lines else "")
        raise CheckpointError(f"{source} does not fit this model: {detail[:200]}") from None
    if not _all_finite(model.state_dict()):
        print(f"warning: {source} holds weights that are not finite (NaN or inf); its predictions are "
              "meaningless (did training diverge? try a lower --lr)", file=sys.stderr)
