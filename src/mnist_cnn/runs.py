"""The run directory on disk: the one module that knows a run's files and reads them back.

    runs/<name>/
        run.json            status (running / interrupted / stopped / failed / complete), times
        config.json         the resolved TrainConfig
        environment.json    versions, device, threads, seed
        checkpoint.pt       latest full training state (the layout: trainstate.CHECKPOINT_SCHEMA)
        metrics.csv         one EpochRecord per row
        train/ validation/  TensorBoard event files (the lesson's two writers)
        plots/              PNG curves and sample classifications

An ensemble (`--members K`) is one run directory holding K member runs, trained one after another:

    runs/<name>/
        run.json config.json environment.json   as above, for the whole ensemble
        members/1/ ... members/K/               each a run directory as above
        ensemble.json                           validation accuracy of the ensemble and of each member

Training writes these through runlog.py (TrainingRun, RunLogger) and checkpoint.py; every other
command reads them through the names here.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, Sequence

import numpy
import torch

from mnist_cnn import data  # data.load_dataset is looked up per call: tests swap in synthetic data
from mnist_cnn.data import Split
from mnist_cnn.errors import CheckpointError, MnistCnnError, UsageError
from mnist_cnn import config as cfg
from mnist_cnn.config import TrainConfig
from mnist_cnn.fileio import atomic_write_bytes, read_json, read_settings_file
from mnist_cnn.version import __version__

CHECKPOINT = "checkpoint.pt"
MEMBERS = "members"           # an ensemble's member runs: RUN/members/1 .. RUN/members/K
ENSEMBLE_REPORT = "ensemble.json"
LOCK = ".lock"  # held (flock) by the one process training the run; the OS drops it when that process dies
SPLITS = ("train", "validation", "test")


@dataclass
class EpochRecord:
    """One epoch of a run's history: a row of metrics.csv and an entry of the checkpoint's "history"."""

    epoch: int                   # 1-based
    seconds: float               # wall time of the epoch, training + validation
    lr: float                    # learning rate at the epoch's last step
    train_loss: float            # mean over the epoch's batches
    train_accuracy: float        # mean over the epoch's batches, as the lesson computed it
    validation_loss: float
    validation_accuracy: float   # over the whole validation set


def write_metrics_csv(path: Path, history: Sequence[EpochRecord]) -> None:
    """Rewrite metrics.csv from the full history (atomic, so resume never duplicates rows)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f.name for f in fields(EpochRecord)])
    for record in history:
        writer.writerow(asdict(record).values())
    atomic_write_bytes(path, out.getvalue().encode())


def read_metrics_csv(path: Path) -> list[EpochRecord]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [EpochRecord(int(r["epoch"]), *(float(r[f.name]) for f in fields(EpochRecord)[1:])) for r in rows]


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """run.json of `run_dir`, checked: a JSON object whose "status" is a string. A run without one
    (an older layout, a copied checkpoint) reads as {"status": "unknown"}; a malformed one is
    one CheckpointError line."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {"status": "unknown"}
    info = read_json(path)
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} is not an mnist-cnn run.json: it holds {describe_value(info)}, not a JSON object")
    if not isinstance(info.get("status"), str):
        raise CheckpointError(f"{path} is not an mnist-cnn run.json: field 'status' is "
                              f"{describe_value(info.get('status')) if 'status' in info else 'missing'} (must be a string)")
    return info


def describe_value(value: Any) -> str:
    """A short description of a value read from a file, for a one-line error."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__} of {len(value)} item{'s' if len(value) != 1 else ''}"
    text = repr(value).replace("\n", " ")
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def load_split(config: dict[str, Any], split: str, data_dir: str | None = None) -> Split:
    """The `split` of the data set a run was trained on (its saved `config`), with its validation size."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if "dataset" not in config:
        raise UsageError("the model carries no training config, so its data set is unknown")
    dataset = data.load_dataset(config["dataset"], data_dir or config.get("data_dir"), config.get("validation_size", 5000),
                           progress=False)
    return getattr(dataset, split)



def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def default_run_name(preset: str) -> str:
    return f"{preset}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_path_name(name: str, what: str = "run name") -> str:
    """Refuse a user-given file or directory name the OS or a terminal would trip on: empty,
    holding control characters (C0, DEL, C1: they would print raw into terminals and logs), or
    longer than the file system's limit per name (255 bytes on ext4, APFS, NTFS). Returns `name`.
    Called before anything is created, by the CLI (--name, --out) and create_run_dir."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"{what} is empty; give a name, or leave the option out for the default")
    bad = sorted({c for c in name if ord(c) < 32 or 127 <= ord(c) < 160})
    if bad:
        shown = ascii(name if len(name) <= 60 else name[:60] + "...")
        raise UsageError(f"{what} {shown} holds control characters ({', '.join(ascii(c) for c in bad)}); "
                         "use letters, digits, '-', '_' or '.'")
    longest = max(name.split(os.sep), key=lambda part: len(os.fsencode(part)))
    limit = _path_limit("PC_NAME_MAX", 255)
    if len(os.fsencode(longest)) > limit:
        raise UsageError(f"{what} {ascii(longest[:40] + '...')} is {len(os.fsencode(longest))} bytes long; "
                         f"the file system allows at most {limit} bytes per name")
    return name


def _path_limit(which: str, default: int, where: str | Path = ".") -> int:
    """os.pathconf's limit for the nearest existing folder at or above `where`, else `default`."""
    folder = Path(where).absolute()
    for candidate in (folder, *folder.parents):
        try:
            return os.pathconf(candidate, which)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError, AttributeError):  # too long, not POSIX, or the file system will not say
            break
    return default


def check_new_run_dir(out_dir: str | Path, name: str, force: bool = False) -> Path:
    """Where a new run named `name` would go, after every check `create_run_dir` makes that
    creates nothing (so a bad name fails before data are loaded): a plain name the file system
    takes, a path within its limit, never a symlink, and a free name unless `force` (or the run
    there failed before its first checkpoint)."""
    check_path_name(name)
    check_path_name(str(Path(out_dir)), "output folder")
    if name in (".", "..") or Path(name).name != name:
        raise UsageError(f"run name {name!r} must be a plain directory name (use --out for the parent directory)")
    path = Path(out_dir) / name
    path_max = _path_limit("PC_PATH_MAX", 4096, out_dir)
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        raise UsageError(f"run directory path is {len(os.fsencode(str(path.absolute())))} bytes long; the "
                         f"system allows {path_max - 1}: use a shorter --out or --name")
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link (to {os.readlink(path)}), not a run directory; nothing was "
                         "replaced or deleted (--force never follows links): remove the link yourself or pick another --name")
    existing = next(p for p in path.absolute().parents if p.exists())  # "/" at worst
    if not path.exists() and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        why = "not a directory" if not existing.is_dir() else "not writable"
        raise UsageError(f"cannot create run directory {path}: {existing} is {why}")
    if path.exists():
        if not force and not failed_before_first_checkpoint(path):
            raise UsageError(
                f"run directory {path} already exists; pass --force to replace it, "
                f"--name to pick another, or --resume {path} to continue it")
        if not (path / "run.json").exists() and any(path.iterdir()):
            raise UsageError(f"{path} exists and is not an mnist-cnn run; refusing to delete it even with --force")
    return path


def create_run_dir(out_dir: str | Path, name: str, force: bool = False) -> Path:
    """Make a fresh run directory; an existing one is replaced only with `force`."""
    path = check_new_run_dir(out_dir, name, force)
    if path.exists():
        lock_run(path).close()  # refuses while another process trains in it
        try:
            # rmtree removes links found inside without following them (fd-based, race-safe).
            shutil.rmtree(path)
        except OSError as e:
            raise UsageError(f"cannot replace {path}: {e.strerror or e}") from None
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise UsageError(f"cannot create run directory {path}: {e.strerror}") from None
    return path


def failed_before_first_checkpoint(run_dir: Path) -> bool:
    """A run that failed before it saved anything to resume: its name may be used again."""
    if run_dir.is_symlink():
        return False
    try:
        status = read_run_info(run_dir)["status"]
    except (MnistCnnError, OSError):
        return False
    saved = (run_dir / CHECKPOINT).exists() or any((run_dir / MEMBERS).glob(f"*/{CHECKPOINT}"))  # an ensemble's
    return status == "failed" and not saved


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


def is_ensemble_run(run_dir: str | Path) -> bool:
    """An ensemble's run directory: members/ and no checkpoint of its own."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and (run_dir / MEMBERS).is_dir() and not (run_dir / CHECKPOINT).exists()


def member_dir(run_dir: str | Path, k: int) -> Path:
    """The run directory of an ensemble's member k (1-based)."""
    return Path(run_dir) / MEMBERS / str(k)


def member_dirs(run_dir: str | Path, members: int | None = None) -> list[Path]:
    """The run directories of an ensemble's members 1..K, in order, K from its config.json unless
    given as `members` (some may not exist yet: members train one after another)."""
    count = ensemble_config(run_dir).members if members is None else members
    return [member_dir(run_dir, k) for k in range(1, count + 1)]


def ensemble_config(run_dir: str | Path) -> TrainConfig:
    """An ensemble run's config.json, checked (its `members` says how many member runs it has);
    a one-line CheckpointError when it is missing, oversized or not a valid config."""
    path = Path(run_dir) / "config.json"
    try:
        values = read_settings_file(path, "ensemble config")
        if not isinstance(values, dict):
            raise UsageError(f"it holds {describe_value(values)}, not a JSON object")
        return cfg.from_dict(dict(values))
    except UsageError as e:
        raise CheckpointError(f"{path} is not a usable ensemble config: {e}") from None


def resolve_run(path: str | Path) -> Path:
    """A run directory given as itself or as its checkpoint file (or an ensemble's directory)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".pt":
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"no run directory at {path}")
    if not (p / CHECKPOINT).is_file() and not is_ensemble_run(p):
        raise CheckpointError(f"{p} has no {CHECKPOINT}: not a finished or resumable mnist-cnn run")
    return p


def environment_info(device: torch.device, seed: int) -> dict[str, Any]:
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
