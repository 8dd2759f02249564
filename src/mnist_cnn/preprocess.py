"""Turning a person's image into what the network saw in training, the way MNIST was made.

MNIST digits are white ink on black, the ink's bounding box scaled so its longer side is 20 px
(aspect kept, anti-aliased), then placed in a 28x28 field so that the ink's centre of mass sits
at the centre. We redo exactly that for any picture: photo, scan, drawing on a web canvas.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from mnist_cnn.decode_budget import file_decode_problem
from mnist_cnn.errors import MnistCnnError

# Pixel budget, checked from the file's header before any pixel is decoded. Decoding costs up
# to 4 bytes a pixel (RGBA) and the grey-scale steps below ~20 bytes a pixel of what is left
# after WORK_SIDE, so 4 MP decoded stays within a few tens of MB whatever the file claims.
MAX_PIXELS = 4_000_000         # PNG, GIF, BMP, WebP, TIFF: decoded at full size (2,000 x 2,000)
MAX_JPEG_PIXELS = 16_000_000   # JPEG: decoded at 1/2..1/8 scale by libjpeg (draft), a 12 MP photo fits
WORK_SIDE = 1024               # longer side, pixels, an image is box-reduced to before grey-scale work
# Pillow's own guard: warns above this, refuses at open above twice this (= MAX_JPEG_PIXELS).
# We check sizes ourselves first, so its warning is noise.
Image.MAX_IMAGE_PIXELS = MAX_JPEG_PIXELS // 2
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Formats decoded, by the first bytes of the file; anything else (EPS, which runs Ghostscript;
# PSD, ICO, TGA, ...) is refused before Pillow looks at it.
MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
         b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
FIELD = 28   # output size, pixels
BOX = 20     # longer side of the ink's bounding box after scaling, pixels
INK_THRESHOLD = 0.15  # fraction of the ink/background contrast that counts as ink


class ImageError(MnistCnnError):
    """An input that is not a usable image (unreadable, truncated, empty canvas, too large)."""


@dataclass
class Preprocessed:
    image: torch.Tensor      # (1, 28, 28) uint8, white ink on black, like MNIST
    inverted: bool           # True when the input had dark ink on a light background


def sniff_format(head: bytes) -> str | None:
    """The allowed format the first bytes announce ("PNG", "JPEG", ...), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in MAGIC.items() if head.startswith(magic)), None)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, without decoding; None when `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def open_image(source: str | Path | bytes) -> Image.Image:
    """Decode an image file or bytes fully (so truncation is found here), within the pixel budget.

    The format is checked from its magic bytes and the size from the header before `load()`;
    JPEGs are decoded at a reduced scale when large, other formats refused above MAX_PIXELS.
    """
    name = "image" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageError("image data is empty (0 bytes)")
            fp = io.BytesIO(source)
        else:
            if Path(source).stat().st_size == 0:
                raise ImageError(f"{name} is empty (0 bytes)")
            fp = open(source, "rb")  # noqa: SIM115 (Pillow closes it with the image)
        fmt = sniff_format(fp.read(16))
        if fmt is None:
            fp.close()
            raise ImageError(f"{name} is not a readable image (accepted: {', '.join(FORMATS)})")
        problem = file_decode_problem(fp, fmt)    # decode_budget.py: before Pillow sees the file
        if problem:
            fp.close()
            raise ImageError(f"{name} is refused before decoding: {problem}")
        fp.seek(0)
        image = Image.open(fp, formats=FORMATS)
        check_size(image, name)
        image.load()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except Image.DecompressionBombError:  # PIL's own guard, raised at open for > 2x its limit
        raise ImageError(f"{name} is an enormous image, more than the {MAX_PIXELS:,} pixels allowed") from None
    except UnidentifiedImageError:  # PIL's message names an in-memory object, not the input
        raise ImageError(f"{name} is not a readable image (not a format PIL knows)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name} is not a readable image ({str(e).splitlines()[0][:120] or type(e).__name__})") from None
    return image


def check_size(image: Image.Image, name: str) -> None:
    """Refuse, or for JPEG set up a reduced decode, from the header's size alone (nothing decoded yet)."""
    pixels = image.width * image.height
    jpeg = isinstance(image, JpegImageFile)          # phone photos may be MPO, a JPEG subclass
    if jpeg and MAX_PIXELS < pixels <= MAX_JPEG_PIXELS:
        image.draft(image.mode if image.mode in ("L", "RGB") else None, (WORK_SIDE, WORK_SIDE))
        pixels = image.width * image.height   # draft keeps both sides >= WORK_SIDE: 1/2 to 1/8 scale
    limit = MAX_JPEG_PIXELS if jpeg else MAX_PIXELS
    if pixels > MAX_PIXELS or image.width * image.height > limit:
        raise ImageError(f"{name} is {image.width}x{image.height}, more than the {MAX_PIXELS:,} pixels allowed"
                         + (f" ({limit:,} for a JPEG)" if jpeg else ""))


def to_grayscale(image: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1]; transparent pixels become the background (white).

    Images whose longer side exceeds 2 x WORK_SIDE are box-reduced by an integer factor first
    (cheap, and far more detail than a 20-pixel digit needs), which bounds the memory below.
    """
    factor = max(image.size) // WORK_SIDE
    if factor >= 2 and image.mode in ("L", "LA", "RGB", "RGBA", "I", "F"):  # reduce() averages values
        image = image.reduce(factor)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit integer and float images (scans, TIFFs): PIL's convert("L") clips them at 255
        # instead of scaling, which whitens a 16-bit page. Scale by the range the values use.
        values = np.asarray(image, dtype=np.float64)
        top = float(np.nanmax(values)) if values.size else 0.0
        full = 1.0 if image.mode == "F" and top <= 1.0 else 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        return np.nan_to_num(np.clip(values / full, 0.0, 1.0)).astype(np.float32)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def mnist_style(gray: np.ndarray, name: str = "image") -> Preprocessed:
    """Grey (H, W) in [0, 1] -> MNIST-style 28x28: ink white on black, box 20 px, centred by mass."""
    # The background is the commoner tone along the border; invert when it is light.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    inverted = bool(np.median(border) > 0.5)
    ink = 1.0 - gray if inverted else gray.copy()
    ink -= np.median(np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]]))
    ink = np.clip(ink, 0.0, None)
    peak = float(ink.max())
    if peak < 0.1:  # less than 10% contrast anywhere: a blank canvas or a flat photo
        raise ImageError(f"{name} has no visible ink (blank or uniform image)")
    ink /= peak
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    small_arr = np.asarray(small, dtype=np.float32)
    # Centre of mass of the scaled ink goes to the field's centre (MNIST's recipe), clamped so
    # the box stays inside the 28x28 field.
    total = small_arr.sum()
    ys, xs = np.indices(small_arr.shape)
    cy, cx = (ys * small_arr).sum() / total, (xs * small_arr).sum() / total
    top = int(np.clip(round(FIELD / 2 - cy), 0, FIELD - new_h))
    left = int(np.clip(round(FIELD / 2 - cx), 0, FIELD - new_w))
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top:top + new_h, left:left + new_w] = small_arr
    out = torch.from_numpy(np.clip(field, 0, 255).round().astype(np.uint8))[None]
    return Preprocessed(out, inverted)


def preprocess(source: str | Path | bytes | Image.Image) -> Preprocessed:
    """Any image file, bytes or PIL image -> MNIST-style (1, 28, 28) uint8 tensor."""
    image = source if isinstance(source, Image.Image) else open_image(source)
    name = "image" if isinstance(source, (bytes, Image.Image)) else str(source)
    return mnist_style(to_grayscale(image), name)
