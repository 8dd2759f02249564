"""Turning a person's image into what the network saw in training, the way MNIST was made.

MNIST digits are white ink on black, the ink's bounding box scaled so its longer side is 20 px
(aspect kept, anti-aliased), then placed in a 28x28 field so that the ink's centre of mass sits
at the centre. We redo exactly that for any picture: photo, scan, drawing on a web canvas. For a
picture larger than 28x28 the ink is first found as ink.py says (paper level, Otsu's threshold,
outline faces filled, strokes brought to MNIST's width); docs/inspect.md ("Photos") has figures.
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

from mnist_cnn import ink as ink_lib
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
WORK_BACKGROUND = 64   # longer side, pixels, of the copy the background (light, shadows) is estimated on
BACKGROUND_SIZE = 0.34 # the median's square, as a fraction of that copy's longer side: wider than strokes
MIN_LIGHT = 0.15       # darkest paper level the ink is divided by (deep shade; less would amplify noise)
TRIM = 0.002           # fraction of the ink's mass that may lie outside its box at each end (specks)
ANALYSIS = 4           # outlines and stroke width are examined at this many times the 20 px box


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
    if max(gray.shape) <= FIELD:
        field, inverted = small_image(gray, name)
    else:
        soft, inverted = ink_only(gray, name)
        box = crop_to_ink(soft, trim=TRIM, level=0.5)         # the ink's box, stray specks left out
        field = to_field(place_in_field(crop_to_ink(analysis_view(box))))
    if not field.any():  # ink too faint or too small to survive the 20 px box
        raise ImageError(f"{name} has no visible ink (blank or uniform image)")
    return Preprocessed(field, inverted)


def small_image(gray: np.ndarray, name: str) -> tuple[torch.Tensor, bool]:
    """An image no larger than 28x28 is not a photo: MNIST's plain recipe only (invert a light
    border, crop, 20 px box, centre of mass), and one already in MNIST's form is used as sent."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    inverted = bool(np.median(border) > 0.5)
    ink = 1.0 - gray if inverted else gray
    if gray.shape == (FIELD, FIELD) and already_mnist(ink):
        return to_field(ink), inverted
    ink = np.clip(ink - np.median(1.0 - border if inverted else border), 0.0, None)
    peak = float(ink.max())
    if peak < 0.1:
        raise ImageError(f"{name} has no visible ink (blank or uniform image)")
    return to_field(place_in_field(crop_to_ink(ink / peak))), inverted


def already_mnist(ink: np.ndarray) -> bool:
    """True for a 28x28 image MNIST's recipe would leave as it is: ink box 19-21 px on its longer
    side, centre of mass within 0.6 px of the centre (every MNIST test digit passes). It is then
    used as sent: nothing is resampled, and the network sees exactly what was trained on."""
    rows, cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1)), np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    if not len(rows) or float(ink.max()) < 0.5:
        return False
    if max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 not in (BOX - 1, BOX, BOX + 1):
        return False
    return all(abs(c - FIELD / 2) <= 0.6 for c in ink_lib.centre_of_mass(ink))


def ink_only(gray: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """Grey (H, W) -> (bright ink on black with the paper removed and the ink levelled, inverted).

    The paper's level (light, shadows) is a median over windows wider than strokes, on a small
    copy; what departs from it is ink, dark or light, whichever side departs more. In the levelled
    image Otsu's threshold is 0.5, the ink's median level 1 and the paper 0 (as is anything below
    half the threshold)."""
    small = resize(gray, fit=WORK_BACKGROUND)
    back = ink_lib.median_background(small, max(3, round(max(small.shape) * BACKGROUND_SIZE)))
    back = resize(back, size=gray.shape)
    inverted = ink_lib.dark_ink(gray - back, gray)
    flat = back - gray if inverted else gray - back
    if inverted:  # paper reflects less where it is in shade, and so does the ink: divide the light out
        flat /= np.maximum(back, MIN_LIGHT)
    flat = np.clip(flat, 0.0, None)
    peak = float(flat.max())
    if peak < 0.1:  # less than 10% contrast anywhere: a blank canvas or a flat photo
        raise ImageError(f"{name} has no visible ink (blank or uniform image)")
    threshold = max(ink_lib.otsu_threshold(flat), ink_lib.noise_ceiling(flat), INK_THRESHOLD * peak)
    level = float(np.median(flat[flat > threshold])) if (flat > threshold).any() else peak
    # Piecewise linear: half the threshold (grain, faint ringing) -> 0, threshold -> 0.5, level -> 1.
    soft = np.interp(flat, [threshold / 2, threshold, max(level, threshold + 1e-3)], [0.0, 0.5, 1.0])
    return soft.astype(np.float32), inverted


def crop_to_ink(soft: np.ndarray, trim: float = 0.0, level: float = INK_THRESHOLD) -> np.ndarray:
    """The rows and columns holding ink (> `level`); with `trim`, also dropping that fraction of
    the ink's mass at each of the four ends (so a speck of noise does not widen the box)."""
    mass = np.where(soft > level, soft, 0.0)
    if not mass.any():
        mass = soft
        if not mass.any():
            return soft
    spans = []
    for axis in (1, 0):
        cumulative = np.cumsum(mass.sum(axis=axis))
        cumulative /= cumulative[-1]
        first = int(np.searchsorted(cumulative, trim, side="right"))
        last = int(np.searchsorted(cumulative, 1.0 - trim, side="left"))
        spans.append(slice(first, max(first, last) + 1))
    return soft[spans[0], spans[1]]


def analysis_view(crop: np.ndarray) -> np.ndarray:
    """The ink crop at ANALYSIS x the final box, outlines filled and strokes brought to MNIST's width."""
    side = ANALYSIS * BOX
    view = np.pad(resize(crop, fit=side, allow_upscale=True), ANALYSIS * 4)
    mask = view > 0.5
    filled = ink_lib.fill_outlines(mask)
    view = np.where(filled & ~mask, 1.0, view)
    return np.clip(ink_lib.normalise_stroke(view, filled, scale=ANALYSIS), 0.0, 1.0)


def place_in_field(crop: np.ndarray) -> np.ndarray:
    """Ink crop -> 28x28: longer side scaled to 20 px (aspect kept), centre of mass at the centre
    (MNIST's recipe), the box clamped inside the field. Values stay in [0, 1]."""
    small = np.clip(resize(crop, fit=BOX, allow_upscale=True), 0.0, 1.0)
    new_h, new_w = small.shape
    cy, cx = ink_lib.centre_of_mass(small)
    top = int(np.clip(round(FIELD / 2 - cy), 0, FIELD - new_h))
    left = int(np.clip(round(FIELD / 2 - cx), 0, FIELD - new_w))
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top:top + new_h, left:left + new_w] = small
    return field


def resize(image: np.ndarray, *, fit: int | None = None, size: tuple[int, int] | None = None,
           allow_upscale: bool = False) -> np.ndarray:
    """Float (H, W) resized with Lanczos (anti-aliased): to `size` (H, W), or so its longer side is
    `fit` (aspect kept; never enlarged unless `allow_upscale`)."""
    h, w = image.shape
    if size is None:
        scale = fit / max(h, w)
        scale = scale if allow_upscale else min(scale, 1.0)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), "F").resize(
        (size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.float32)


def to_field(ink: np.ndarray) -> torch.Tensor:
    """(28, 28) float ink in [0, 1] -> (1, 28, 28) uint8."""
    return torch.from_numpy(np.clip(ink * 255.0, 0, 255).round().astype(np.uint8))[None]


def preprocess(source: str | Path | bytes | Image.Image) -> Preprocessed:
    """Any image file, bytes or PIL image -> MNIST-style (1, 28, 28) uint8 tensor."""
    image = source if isinstance(source, Image.Image) else open_image(source)
    name = "image" if isinstance(source, (bytes, Image.Image)) else str(source)
    return mnist_style(to_grayscale(image), name)
