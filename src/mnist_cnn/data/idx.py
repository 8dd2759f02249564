"""IDX files, the format the MNIST family ships in (http://yann.lecun.com/exdb/mnist/).

Layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32
per dimension, then the values in C order (big-endian for multi-byte types). MNIST images use
magic 0x00000803 (uint8, 3 dims), labels 0x00000801 (uint8, 1 dim).

Every malformed input is reported as a DataError naming its origin; nothing else escapes the
readers, whatever the bytes (the hypothesis tests hold us to that).
"""
from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mnist_cnn.errors import DataError
from mnist_cnn.fileio import atomic_write_bytes

# IDX dtype code -> numpy dtype as stored on disk (multi-byte types are big-endian).
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_SIZE_TO_CODE = {(dt.kind, dt.itemsize): code for code, dt in _CODE_TO_DTYPE.items()}

GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 20  # bytes per read in read_idx_bytes


def maybe_gunzip(data: bytes, origin: str = "<bytes>") -> bytes:
    """Return `data` decompressed if it is gzip (detected by content, not by file name)."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{origin}: corrupt gzip data ({exc})") from exc


def parse_idx(data: bytes, origin: str = "<bytes>") -> np.ndarray:
    """Decode uncompressed IDX bytes. The result is in native byte order; for uint8 it is a
    read-only view on `data` (no copy)."""
    if len(data) < 4:
        raise DataError(f"{origin}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{origin}: not an IDX file (magic {data[:4].hex()}, expected 0000xxxx)")
    code, ndim = data[2], data[3]
    if code not in _CODE_TO_DTYPE:
        raise DataError(f"{origin}: unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{origin}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{origin}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _CODE_TO_DTYPE[code]
    # Python ints: a hostile header cannot overflow this or make us allocate anything.
    expected = dtype.itemsize * int(np.prod(dims, dtype=object))
    actual = len(data) - header
    if actual < expected:
        raise DataError(f"{origin}: truncated: {actual} data bytes, header {dims} needs {expected}")
    if actual > expected:
        raise DataError(f"{origin}: {actual - expected} unexpected bytes after the data for shape {dims}")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    try:
        array = array.reshape(dims)
    except ValueError as exc:  # >64 dims, or empty but with dims numpy cannot index
        raise DataError(f"{origin}: unsupported IDX shape {dims} ({exc})") from exc
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    return array


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed (memory bounded: see read_idx_bytes)."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            data = read_idx_bytes(stream, str(path))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_idx(data, str(path))


def idx_size(header: bytes) -> int | None:
    """Total bytes (header + data) the IDX header at the start of `header` declares, or None
    while the header is incomplete or not IDX (parse_idx then says what is wrong)."""
    if len(header) < 4 or header[0] or header[1] or header[2] not in _CODE_TO_DTYPE or header[3] == 0:
        return None
    size = 4 + 4 * header[3]
    if len(header) < size:
        return None
    dims = np.frombuffer(header, dtype=">u4", count=header[3], offset=4)
    # Python ints: a hostile header cannot overflow this.
    return size + _CODE_TO_DTYPE[header[2]].itemsize * int(np.prod([int(d) for d in dims], dtype=object))


def read_idx_bytes(stream: BinaryIO, origin: str, max_bytes: int | None = None) -> bytes:
    """The uncompressed IDX bytes of `stream` (plain or gzip, told apart by content), read in
    1 MiB chunks and refused as soon as they pass the size the IDX header declares (or
    `max_bytes`, the size the registry knows): a 4 MB .gz that inflates to 4 GiB costs one chunk
    past the real size, never the 4 GiB. Memory: about twice the allowed size (buffer +
    result), whatever the input. Every IDX file the data chain reads (data dir, cache, download,
    zip member, Debian copy) goes through here."""
    if not hasattr(stream, "peek"):
        stream = io.BufferedReader(stream)  # type: ignore[arg-type]
    is_gz = stream.peek(2)[:2] == GZIP_MAGIC  # type: ignore[attr-defined]
    reader: BinaryIO = gzip.GzipFile(fileobj=stream, mode="rb") if is_gz else stream
    out = bytearray()
    limit = max_bytes
    declared: int | None = None
    try:
        while True:
            room = _READ_CHUNK if limit is None else min(_READ_CHUNK, limit + 1 - len(out))
            chunk = reader.read(room)
            if not chunk:
                break
            out += chunk
            if declared is None and (declared := idx_size(out[:4 + 4 * 255])) is not None:
                limit = declared if max_bytes is None else min(declared, max_bytes)
            elif declared is None and len(out) >= 4 + 4 * 255:
                break  # not IDX: the first chunk is enough for parse_idx to say so
            if limit is not None and len(out) > limit:
                what = "decompresses to" if is_gz else "holds"
                allows = "its IDX header declares" if limit == declared else "the data set registry expects"
                raise DataError(f"{origin}: {what} more than {limit} bytes, the size {allows}; stopped "
                                "reading there (a corrupt file, or a decompression bomb)")
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{origin}: corrupt gzip data ({exc})") from exc
    return bytes(out)


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for `array` (uint8, int8, int16, int32, float32 or float64; 1..255 dims)."""
    array = np.asarray(array)
    code = _KIND_SIZE_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX dimensions must fit in uint32, got {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` as IDX, gzip-compressed when the name ends in .gz. Atomic (fileio.atomic_write_bytes)."""
    path = Path(path)
    data = encode_idx(array)
    if path.suffix == ".gz":
        # mtime=0: identical arrays give identical files (stable checksums).
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
