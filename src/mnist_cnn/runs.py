"""Run directories: where a training run keeps everything, and how other commands find it.

    runs/<name>/
        run.json            status (running / interrupted / stopped / failed / complete), times
        config.json         the resolved TrainConfig
        environment.json    versions, device, threads, seed
        checkpoint.pt       latest full training state (see checkpoint.py)
        metrics.csv         one row per epoch
        train/ validation/  TensorBoard event files (the lesson's two writers)
        plots/              PNG curves and sample classifications
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch

from mnist_cnn.checkpoint import CheckpointWriteError, read_run_info, remove_stale_temp_files, save_checkpoint
from mnist_cnn.errors import CheckpointError, MnistCnnError, UsageError
from mnist_cnn.fileio import read_json, write_json  # noqa: F401  (re-exported: callers import them from here)

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"  # held (flock) by the one process training the run; the OS drops it when that process dies


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
    return status == "failed" and not (run_dir / CHECKPOINT).exists()


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


class TrainingRun:
    """One training process's hold on its run directory: the lock, run.json's status, and the
    files only the main process writes. With `writes=False` (torchrun ranks other than 0)
    every write is skipped, so the loop calls these the same way on every rank."""

    def __init__(self, run_dir: Path, writes: bool, resumed_from_step: int | None) -> None:
        self.dir = Path(run_dir)
        self.writes = writes
        self.info: dict[str, Any] = {"status": "running", "started": now_iso(), "resumed_from_step": resumed_from_step}
        self._lock: IO[str] | None = None

    def claim(self) -> None:
        """Lock the run (a second training process is refused here) and mark it running."""
        if not self.writes:
            return
        self._lock = lock_run(self.dir)
        if self.info["resumed_from_step"] is not None:
            remove_stale_temp_files(self.dir)  # left by writes a kill -9 cut short; nobody else writes here now
        write_json(self.dir / "run.json", self.info)

    def write_json(self, name: str, value: Any) -> None:
        if self.writes:
            write_json(self.dir / name, value)

    def save_checkpoint(self, state_dict: Callable[[], dict[str, Any]]) -> None:
        """Save `state_dict()` as the run's checkpoint (called only where this process writes)."""
        if self.writes:
            save_checkpoint(self.dir / CHECKPOINT, state_dict())

    def set_status(self, status: str, best_effort: bool = False) -> None:
        """run.json's status; `best_effort`: a status that cannot be written (full disk) must not
        hide the error being reported."""
        stamp = "finished" if status in ("complete", "stopped") else "stopped"
        try:
            self.write_json("run.json", {**self.info, "status": status, stamp: now_iso()})
        except OSError:
            if not best_effort:
                raise

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@contextmanager
def training_run(run_dir: Path, writes: bool, resumed_from_step: int | None,
                 barrier: Callable[[], None] = lambda: None) -> Iterator[TrainingRun]:
    """Hold `run_dir` for one training call; on the way out of an error, record why in run.json.

    An exception with a `run_status` attribute (an interrupt: "interrupted") sets that status,
    any other sets "failed"; file-system errors become one line naming what could not be written.
    `barrier` lets every torchrun rank wait for rank 0 to finish writing before they all exit.
    """
    run = TrainingRun(run_dir, writes, resumed_from_step)
    run.claim()
    try:
        yield run
    except BaseException as e:
        run.set_status(getattr(e, "run_status", "failed"), best_effort=True)
        if getattr(e, "run_status", None):
            barrier()
        if isinstance(e, (OSError, CheckpointWriteError)):  # full disk, lost mount, read-only directory...
            raise MnistCnnError(_write_failure(e, run_dir)) from e
        raise
    finally:
        run.release()


def _write_failure(e: OSError | CheckpointWriteError, run_dir: Path) -> str:
    reason = str(e) if isinstance(e, CheckpointWriteError) else f"cannot write {e.filename or run_dir}: {e.strerror or e}"
    if (run_dir / CHECKPOINT).is_file():
        reason += f". Once that is fixed, resume with: mnist-cnn train --resume {run_dir}"
    return reason
