"""The decode budget: refuse an image whose structure would cost far more to decode than its size
suggests, from a scan of its bytes before Pillow sees them.

Pillow walks a JPEG's segments before the first scan and every PNG chunk in Python, one loop
turn each, holding the GIL; libjpeg decodes every scan of a progressive JPEG over the whole
image. A 16 MB body of 4 million empty APP1 segments, or a progressive JPEG with one scan
repeated 1,000 times, or a PNG with 16,000 iCCP chunks, costs seconds of CPU and hundreds of MB
while holding a decode slot. Real files have a handful of metadata segments, at most a few dozen
scans and one ICC profile, so the limits below are far above them and far below an attack.
GIF extension blocks before the first image are counted too (Pillow reads them one by one in
Python). The scan is a few C-level searches over the bytes: microseconds for a normal image, and it stops
at the first limit passed.
"""
from __future__ import annotations

import io
import mmap
import re
import struct
from typing import Union

MAX_JPEG_METADATA = 256    # APPn + COM segments: Exif, XMP (extended XMP spans a few), ICC chunks, ...
MAX_JPEG_SEGMENTS = 1024   # every marker segment (tables are repeated before each scan)
MAX_JPEG_SCANS = 64        # SOS: baseline has 1 per component, libjpeg's progressive 6-10, mozjpeg ~20
MAX_PNG_CHUNKS = 8192      # IDAT included: libpng splits image data into 8 KiB chunks (16 MiB -> 2,048)
MAX_PNG_ANCILLARY = 64     # chunks other than IHDR, PLTE, IDAT, IEND (text, gamma, pHYs, ...)
MAX_PNG_ICCP = 1           # the PNG spec allows one; Pillow decompresses each it meets
MAX_GIF_BLOCKS = 4096      # extensions + their data sub-blocks before the first image (comments, XMP, loop)
# A marker in JPEG entropy-coded data: 0xFF then a byte that is not stuffing (00), a restart
# marker (D0-D7) or fill (FF).
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})   # TEM and RSTn carry no length
_PNG_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})
Buffer = Union[bytes, memoryview, mmap.mmap]


def decode_problem(data: Buffer, fmt: str) -> str | None:
    """Why `data` (a whole encoded image of format `fmt`: bytes, a memoryview or a file's mmap) would cost
    more to decode than any real image, or None; formats other than JPEG, PNG and GIF pass."""
    check = {"JPEG": jpeg_problem, "PNG": png_problem, "GIF": gif_problem}.get(fmt)
    return check(data) if check else None


def file_decode_problem(fp: io.BytesIO | io.BufferedReader, fmt: str) -> str | None:
    """`decode_problem` of a whole file open for reading, seen through its buffer or a memory
    map: a large file is not read into memory for the count."""
    with fp.getbuffer() if isinstance(fp, io.BytesIO) else mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return decode_problem(view, fmt)


def jpeg_problem(data: Buffer) -> str | None:
    """What makes this JPEG too costly (None when nothing does): its marker segments counted."""
    metadata = segments = scans = 0
    pos = 2                                        # after SOI (FF D8)
    while pos + 4 <= len(data):
        if data[pos] != 0xFF or data[pos + 1] == 0x00:   # entropy-coded data after SOS: find the next marker
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start(1) - 1
        marker = data[pos + 1]
        if marker == 0xFF:                         # fill bytes before a marker
            pos += 1
            continue
        if marker == 0xD9:                         # EOI
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        segments += 1
        metadata += 0xE0 <= marker <= 0xEF or marker == 0xFE
        scans += marker == 0xDA
        if metadata > MAX_JPEG_METADATA:
            return f"more than {MAX_JPEG_METADATA} JPEG metadata segments (APPn/COM)"
        if scans > MAX_JPEG_SCANS:
            return f"more than {MAX_JPEG_SCANS} JPEG scans"
        if segments > MAX_JPEG_SEGMENTS:
            return f"more than {MAX_JPEG_SEGMENTS} JPEG marker segments"
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def png_problem(data: Buffer) -> str | None:
    """What makes this PNG too costly (None when nothing does): its chunks counted."""
    chunks = ancillary = iccp = 0
    pos = 8                                        # after the signature
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        ancillary += kind not in _PNG_CRITICAL
        iccp += kind == b"iCCP"
        if chunks > MAX_PNG_CHUNKS:
            return f"more than {MAX_PNG_CHUNKS} PNG chunks"
        if ancillary > MAX_PNG_ANCILLARY:
            return f"more than {MAX_PNG_ANCILLARY} PNG ancillary chunks"
        if iccp > MAX_PNG_ICCP:
            return "more than one PNG iCCP (colour profile) chunk"
        if kind == b"IEND":
            break
        pos += 12 + length                         # length, type, data, CRC
    return None


def gif_problem(data: Buffer) -> str | None:
    """What makes this GIF too costly (None when nothing does): the extension sub-blocks before its
    first image counted (Pillow reads each in Python; the image's own data is read in C)."""
    if len(data) < 13:
        return None
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)       # after the global colour table
    blocks = 0                                                        # extensions and their sub-blocks
    while pos + 2 <= len(data) and data[pos] == 0x21:                # an extension: label, sub-blocks
        pos += 2
        blocks += 1
        while pos < len(data) and data[pos] and blocks <= MAX_GIF_BLOCKS:
            blocks += 1
            pos += 1 + data[pos]
        if blocks > MAX_GIF_BLOCKS:
            return f"more than {MAX_GIF_BLOCKS} GIF extension blocks before the image"
        pos += 1                                                      # the terminating empty sub-block
    return None
