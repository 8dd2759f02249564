"""The decode budget (issue #24 rows 1-2): images whose structure costs far more to decode than
their size suggests are refused before Pillow sees them, and real images are not.

Cheapness is asserted by counting, not timing: Pillow's `Image.open` is never called for a
refused image, so none of its per-segment Python loops or libjpeg's per-scan passes run.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_cnn import preprocess as pp
from mnist_cnn.decode_budget import MAX_JPEG_SCANS, jpeg_problem, png_problem
from mnist_cnn.preprocess import ImageError


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def digit(mode: str = "L", size: int = 200) -> Image.Image:
    im = Image.new(mode, (size, size), "white")
    ImageDraw.Draw(im).line([(size * 0.45, size * 0.2), (size * 0.5, size * 0.8)], fill="black", width=size // 12)
    return im


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each marker segment up to the first SOS, then of the SOS with its scan data."""
    out, pos = [], 2
    while data[pos + 1] != 0xDA:
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        out.append((pos, end))
        pos = end
    return out


def last_scan(data: bytes) -> tuple[int, int]:
    """(start, end) of the last SOS segment and its entropy-coded data (up to EOI)."""
    start = data.rindex(b"\xff\xda")
    return start, len(data) - 2


def many_app1_jpeg(n: int) -> bytes:
    """Issue row 1: SOI, `n` empty APP1 segments, then a small real JPEG's segments."""
    real = encoded(digit(), "JPEG")
    return b"\xff\xd8" + b"\xff\xe1\x00\x02" * n + real[2:]


def repeated_scan_jpeg(repeats: int, size: int = 400) -> bytes:
    """Issue row 2: a progressive grey JPEG with its last refinement scan repeated."""
    data = encoded(digit("L", size), "JPEG", progressive=True, quality=90)
    start, end = last_scan(data)
    return data[:end] + data[start:end] * repeats + b"\xff\xd9"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def many_iccp_png(n: int) -> bytes:
    """Issue row 2's milder case: a PNG with `n` iCCP chunks before its image data."""
    real = encoded(digit(), "PNG")
    iccp = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(4000)))
    return real[:33] + iccp * n + real[33:]             # after the signature and IHDR (8 + 25 bytes)


def gif_with_extensions(extensions: bytes) -> bytes:
    """A small real GIF with `extensions` (raw extension blocks) before its image."""
    real = encoded(digit("L", 40).convert("P"), "GIF")
    image_at = real.index(b"\x2c", 13 + (3 << ((real[10] & 7) + 1) if real[10] & 0x80 else 0))
    return real[:image_at] + extensions + real[image_at:]


@pytest.fixture
def pillow_opens(monkeypatch) -> list[int]:
    """Counts the calls to Pillow's Image.open made by preprocess."""
    calls: list[int] = []
    real_open = pp.Image.open

    def counting_open(*args, **kw):
        calls.append(1)
        return real_open(*args, **kw)

    monkeypatch.setattr(pp.Image, "open", counting_open)
    return calls


@pytest.mark.parametrize("make, words", [
    (lambda: many_app1_jpeg(100_000), "more than 256 JPEG metadata segments (APPn/COM)"),
    (lambda: b"\xff\xd8" + b"\xff\xfe\x00\x02" * 100_000 + encoded(digit(), "JPEG")[2:], "APPn/COM"),
    (lambda: repeated_scan_jpeg(1000), f"more than {MAX_JPEG_SCANS} JPEG scans"),
    (lambda: many_iccp_png(16_000), "more than one PNG iCCP"),
    (lambda: encoded(digit(), "PNG")[:33] + png_chunk(b"tEXt", b"k\x00v") * 1000 + encoded(digit(), "PNG")[33:],
     "more than 64 PNG ancillary chunks"),
    (lambda: gif_with_extensions(b"\x21\xfe" + b"\x01x" * 100_000 + b"\x00"), "more than 4096 GIF extension blocks"),
    (lambda: gif_with_extensions(b"\x21\xfe\x00" * 100_000), "more than 4096 GIF extension blocks"),
])
def test_costly_structures_are_refused_before_pillow_sees_them(make, words, pillow_opens, tmp_path):
    data = make()
    for source in (data, tmp_path / "hostile.img"):                 # bytes (serve) and a file (predict)
        if not isinstance(source, bytes):
            source.write_bytes(data)
        with pytest.raises(ImageError, match="refused before decoding") as e:
            pp.preprocess(source)
        assert words in str(e.value) and "\n" not in str(e.value)
    assert pillow_opens == []


def test_many_empty_idat_chunks_are_refused():
    real = encoded(digit(), "PNG")
    iend = real.rindex(b"IEND") - 4
    data = real[:iend] + png_chunk(b"IDAT", b"") * 10_000 + real[iend:]
    assert png_problem(data) == "more than 8192 PNG chunks"


@pytest.mark.parametrize("fmt, kw", [
    ("JPEG", {}), ("JPEG", {"progressive": True}), ("JPEG", {"progressive": True, "optimize": True}),
    ("JPEG", {"quality": 95, "subsampling": 0, "restart_marker_blocks": 1}), ("PNG", {}), ("PNG", {"optimize": True}),
])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_real_images_pass_and_decode(fmt, kw, mode, pillow_opens):
    im = digit(mode, 600)
    noise = np.random.default_rng(0).integers(0, 40, (600, 600, len(mode)), dtype=np.uint8).squeeze()
    im = Image.fromarray(np.asarray(im) - noise)                  # entropy data full of 0xFF bytes
    data = encoded(im, fmt, **kw)
    assert pp.preprocess(data).image.shape == (1, 28, 28)
    assert pillow_opens == [1]


def test_jpeg_with_exif_xmp_and_a_multi_chunk_icc_profile_passes():
    exif = Image.Exif()
    exif[0x010E] = "a digit"
    data = encoded(digit("RGB"), "JPEG", exif=exif.tobytes(), icc_profile=bytes(200_000), comment=b"hello",
                   progressive=True)
    assert jpeg_problem(data) is None
    assert pp.preprocess(data).image.shape == (1, 28, 28)


def test_scan_count_limit_sits_between_real_and_hostile_files():
    assert jpeg_problem(repeated_scan_jpeg(MAX_JPEG_SCANS - 12, size=64)) is None     # 6 scans + repeats
    assert jpeg_problem(repeated_scan_jpeg(MAX_JPEG_SCANS, size=64)) == f"more than {MAX_JPEG_SCANS} JPEG scans"


def test_real_gifs_pass_and_decode(pillow_opens):
    frames = [digit("L", 60).convert("P"), Image.new("P", (60, 60))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0, comment=b"a digit " * 200)
    assert pp.preprocess(data).image.shape == (1, 28, 28)
    assert pillow_opens == [1]
