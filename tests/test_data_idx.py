"""IDX reader/writer: round trips, every kind of corruption -> DataError, property tests."""
from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mnist_cnn.data import read_idx, write_idx
from mnist_cnn.data.idx import encode_idx, maybe_gunzip, parse_idx
from mnist_cnn.errors import DataError

IMAGES = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)


def mnist_header(n: int) -> bytes:
    return struct.pack(">IIII", 0x00000803, n, 28, 28)


@pytest.mark.parametrize("name", ["imgs", "imgs.gz"])
def test_round_trip_plain_and_gz(tmp_path, name):
    path = tmp_path / name
    write_idx(path, IMAGES)
    raw = path.read_bytes()
    assert raw.startswith(b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (3, 28, 28)
    np.testing.assert_array_equal(back, IMAGES)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writer leaves no temp files


def test_header_is_mnist_layout():
    data = encode_idx(IMAGES)
    assert data[:16] == mnist_header(3)
    assert encode_idx(np.array([1, 2], np.uint8))[:8] == struct.pack(">II", 0x00000801, 2)


def test_gzip_detected_by_content_not_name(tmp_path):
    path = tmp_path / "plain-name"
    path.write_bytes(gzip.compress(encode_idx(IMAGES)))
    np.testing.assert_array_equal(read_idx(path), IMAGES)


def test_multibyte_dtypes_are_big_endian_on_disk():
    a = np.array([1, -2, 70000], dtype=np.int32)
    data = encode_idx(a)
    assert data[:8] == bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3)
    assert data[8:] == struct.pack(">iii", 1, -2, 70000)
    np.testing.assert_array_equal(parse_idx(data), a)


GOOD = encode_idx(IMAGES)
CORRUPT = {
    "empty": b"",
    "short header": b"\x00\x00",
    "bad magic": b"\x01\x02" + GOOD[2:],
    "unknown dtype code": b"\x00\x00\x07\x03" + GOOD[4:],
    "zero dims": b"\x00\x00\x08\x00",
    "truncated dims": GOOD[:10],
    "truncated data": GOOD[:-1],
    "extra bytes": GOOD + b"\x00",
    "wrong dims": mnist_header(4) + GOOD[16:],  # header says 4 images, 3 present
    "huge dims": struct.pack(">IIII", 0x00000803, 2**32 - 1, 2**32 - 1, 2**32 - 1),
}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_files_raise_data_error_naming_file(tmp_path, kind, gz):
    data = CORRUPT[kind]
    path = tmp_path / ("bad.gz" if gz else "bad")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="bad"):
        read_idx(path)


@pytest.mark.parametrize("cut", [5, 30, -9])  # inside header / inside stream / CRC trailer
def test_truncated_gzip_stream(tmp_path, cut):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(GOOD)[:cut])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope"):
        read_idx(tmp_path / "nope")


def test_writer_rejects_unrepresentable_arrays():
    with pytest.raises(ValueError):
        encode_idx(np.zeros(3, dtype=np.uint16))
    with pytest.raises(ValueError):
        encode_idx(np.zeros((), dtype=np.uint8))


IDX_DTYPES = st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(IDX_DTYPES, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)),
       st.booleans())
def test_property_round_trip(array, gz):
    data = encode_idx(array)
    if gz:
        data = gzip.compress(data)
    back = parse_idx(maybe_gunzip(data))
    assert back.shape == array.shape and back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)  # NaNs compare equal here


def _only_data_error(data: bytes) -> None:
    try:
        parse_idx(maybe_gunzip(data))
    except DataError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_property_random_bytes_only_data_error(data):
    _only_data_error(data)


@settings(max_examples=300, deadline=None)
@given(code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
       dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 8), min_size=0, max_size=5),
       body=st.binary(max_size=100), gz=st.booleans(), cut=st.integers(0, 40))
def test_property_plausible_headers_only_data_error(code, dims, body, gz, cut):
    # Random bytes rarely get past the magic check; these do, and explore the dims/length logic.
    data = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body
    if gz:
        data = gzip.compress(data)[: max(0, len(data) - cut) or None]
    _only_data_error(data)


@settings(max_examples=300, deadline=None)
@given(dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 8), min_size=1, max_size=4),
       body=st.binary(max_size=100), extra=st.integers(0, 3000), gz=st.booleans(),
       max_bytes=st.none() | st.integers(0, 200))
def test_property_bounded_reader_never_passes_its_limit(dims, body, extra, gz, max_bytes):
    """read_idx_bytes returns at most the size the header declares (and max_bytes), or raises
    DataError; never anything else, whatever the header, body and compression."""
    from mnist_cnn.data.idx import idx_size, read_idx_bytes

    data = bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body + bytes(extra)
    try:
        out = read_idx_bytes(io.BytesIO(gzip.compress(data) if gz else data), "x", max_bytes)
    except DataError:
        return
    assert out == data[:len(out)]
    assert len(out) <= min(idx_size(data), max_bytes if max_bytes is not None else len(data))
