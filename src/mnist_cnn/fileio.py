"""Small file I/O every module shares: one atomic write, and JSON read/write with one-line errors.

An atomic write goes to a temporary file in the same directory, is fsynced, renamed over the
target and the directory is fsynced, so a reader (or a crash) sees the old file or the whole new
one, never a part. The new file gets the permissions a plain `open(path, "w")` would: 0666 minus
the umask, so a teammate or a TensorBoard server under another user can read a shared runs/ folder.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from mnist_cnn.errors import CheckpointError, UsageError

MAX_SETTINGS_BYTES = 1 << 20   # a config or search-space file; real ones are a few KB
TEMP_SUFFIX = ".tmp"  # temp files are ".<name>.<random>.tmp"; see checkpoint.remove_stale_temp_files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically. OSError (full disk, read-only directory) propagates."""
    path = Path(path)
    tmp, fd = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory entry is flushed.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _create_temp(path: Path) -> tuple[Path, int]:
    # os.open with mode 0o666 lets the kernel apply the umask, as a normal write does
    # (tempfile.mkstemp would force 0600).
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot pick a free temporary name next to {path}")


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON (key order kept)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is a one-line CheckpointError
    (the JSON files read are a run's: run.json, config.json, test_report.json)."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise CheckpointError(f"cannot read {path}: not valid JSON ({str(e).splitlines()[0][:160]})") from None


def read_settings_file(path: str | Path, what: str) -> Any:
    """A file a user wrote (a config, a search space): TOML by its suffix, JSON otherwise.
    Unreadable, larger than MAX_SETTINGS_BYTES (an endless /dev/zero or pipe included), nested
    too deeply or malformed -> one UsageError line naming `what` ("config file", ...)."""
    import tomllib

    path = Path(path)
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SETTINGS_BYTES + 1)    # bounded: the file may never end
        if len(data) > MAX_SETTINGS_BYTES:
            raise UsageError(f"{what} {path} is larger than {MAX_SETTINGS_BYTES >> 20} MiB; "
                             "a settings file is a few kilobytes")
        text = data.decode("utf-8")
        return tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise UsageError(f"{what} {path} is not valid {kind}: {str(e).splitlines()[0]}") from None
    except RecursionError:  # json and tomllib recurse once per level of nesting
        raise UsageError(f"{what} {path} is not valid {kind}: nested too deeply") from None
