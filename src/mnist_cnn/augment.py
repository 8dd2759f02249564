"""Data augmentation, batched on the device: one random warp per image, no per-sample Python.

`random_affine` draws a rotation, scale and shift for every image of the batch, builds the (N, 2, 3)
matrices at once and resamples the whole batch with one `grid_sample` call. `random_elastic` adds
an elastic distortion to the same warp (Simard, Steinkraus and Platt 2003, "Best practices for
convolutional neural networks applied to visual document analysis"): a random displacement per
pixel, smoothed with a Gaussian, so strokes bend the way handwriting varies. Randomness comes
from torch's global generator on the batch's device, which the training checkpoint saves, so a
resumed run draws the same warps (bit-exact resume).

`tta_views` gives fixed (deterministic) shifted copies for test-time augmentation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mnist_cnn.errors import UsageError

AUGMENTATIONS = ("none", "affine", "elastic")  # the single-part values; see parse_augment for all

# Magnitudes for digits: small enough that a 6 never becomes a 9 or a 1 a 7.
ROTATE_DEGREES = 10.0   # uniform in [-10, +10] degrees
SCALE = 0.10            # zoom uniform in [0.9, 1.1]
SHIFT_PIXELS = 2.0      # uniform in [-2, +2] pixels on each axis (of 28)
# Simard et al.'s elastic field: uniform [-1, 1] per pixel and axis, Gaussian-smoothed with sigma
# 4 px, scaled by alpha 34 px: displacements of about 1.4 px (standard deviation), smooth over ~8 px.
ELASTIC_ALPHA = 34.0
ELASTIC_SIGMA = 4.0


def _affine_grid(x: torch.Tensor, degrees: float, scale: float, shift_pixels: float) -> torch.Tensor:
    """Sampling grid (N, H, W, 2) of one random rotation, zoom and shift per image."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, device=x.device) * 2 - 1                  # (N, 4) uniform in [-1, 1]
    angle = u[:, 0] * math.radians(degrees)
    zoom = 1 + u[:, 1] * scale
    # affine_grid works in normalised coordinates, where the image spans [-1, 1]: 1 px = 2/size.
    tx, ty = u[:, 2] * shift_pixels * 2 / w, u[:, 3] * shift_pixels * 2 / h
    # theta maps OUTPUT coordinates to the INPUT ones sampled there: dividing by zoom samples a
    # region 1/zoom as large, so the digit appears zoom times larger.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (N, 2, 3)
    return F.affine_grid(theta, list(x.shape), align_corners=False)


def _resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    out = F.grid_sample(x.contiguous(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def random_affine(x: torch.Tensor, degrees: float = ROTATE_DEGREES, scale: float = SCALE,
                  shift_pixels: float = SHIFT_PIXELS) -> torch.Tensor:
    """Randomly rotated, scaled and shifted copy of a float batch (N, C, H, W); background fills with 0."""
    return _resample(x, _affine_grid(x, degrees, scale, shift_pixels))


def gaussian_kernel(sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian (2 * ceil(3 sigma) + 1 taps)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def elastic_field(n: int, h: int, w: int, alpha: float = ELASTIC_ALPHA, sigma: float = ELASTIC_SIGMA,
                  device: torch.device | None = None) -> torch.Tensor:
    """Random smooth displacements (N, 2, H, W) in pixels: (dx, dy) per output pixel."""
    field = torch.rand(n * 2, 1, h, w, device=device) * 2 - 1
    k = gaussian_kernel(sigma, device)
    r = len(k) // 2
    # Separable blur, zero padding: the field fades towards the border, where digits have none.
    field = F.conv2d(field, k.view(1, 1, 1, -1), padding=(0, r))
    field = F.conv2d(field, k.view(1, 1, -1, 1), padding=(r, 0))
    return (alpha * field).view(n, 2, h, w)


def random_elastic(x: torch.Tensor, alpha: float = ELASTIC_ALPHA, sigma: float = ELASTIC_SIGMA) -> torch.Tensor:
    """`random_affine`'s warp plus an elastic distortion, in one resampling."""
    n, _, h, w = x.shape
    grid = _affine_grid(x, ROTATE_DEGREES, SCALE, SHIFT_PIXELS)
    d = elastic_field(n, h, w, alpha, sigma, x.device)                # pixels
    d = torch.stack([d[:, 0] * 2 / w, d[:, 1] * 2 / h], dim=-1)      # (N, H, W, 2), normalised
    return _resample(x, grid + d)


# ---------------------------------------------------------------- augmentations for clothes
# Fashion-MNIST's classes survive a left-right mirror (a shoe facing left is still a shoe); digits
# and letters do not, so config.validate refuses `flip` for data sets the registry does not mark
# `flip_symmetric`. Erasing uses the default settings of Zhong et al. 2020, "Random erasing data
# augmentation" (p 0.5, area 2-40%, aspect ratio 0.3-3.3, random-value fill); crop is the usual
# pad-and-crop, with a small pad because these images are only 28 px wide.
FLIP_PROBABILITY = 0.5
CROP_PAD = 2            # pixels of zero padding on each side; crops shift by up to +-2 px
ERASE_PROBABILITY = 0.5
ERASE_AREA = (0.02, 0.4)          # fraction of the image erased, uniform
ERASE_ASPECT = (0.3, 1 / 0.3)     # height / width of the rectangle, log-uniform

PARTS = ("affine", "elastic", "crop", "flip", "erase")  # applied in this order
FLIP_PARTS = ("flip",)
# Named combinations, usable wherever a part name is.
COMBINATIONS = {"fashion": ("crop", "flip", "erase")}


def parse_augment(spec: str) -> tuple[str, ...]:
    """The parts of an --augment value ('none', a part, a combination, or parts joined by '+'),
    in application order; UsageError for unknown, repeated or conflicting parts."""
    if spec == "none":
        return ()
    parts: list[str] = []
    for name in spec.split("+"):
        if name not in PARTS and name not in COMBINATIONS:
            raise UsageError(f"augment must be one of none, {', '.join(PARTS + tuple(COMBINATIONS))} or "
                             f"those joined by '+' (e.g. crop+flip), not {spec!r}")
        parts += COMBINATIONS.get(name, (name,))
    if len(set(parts)) < len(parts) or {"affine", "elastic"} <= set(parts):
        raise UsageError(f"augmentation {spec!r} repeats a part (elastic already includes affine)")
    return tuple(p for p in PARTS if p in parts)


def random_flip(x: torch.Tensor, p: float = FLIP_PROBABILITY) -> torch.Tensor:
    """Each image of (N, C, H, W) mirrored left-right with probability p."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
    return torch.where(flip, x.flip(-1), x)


def random_crop(x: torch.Tensor, pad: int = CROP_PAD) -> torch.Tensor:
    """Each image shifted by a whole number of pixels in [-pad, pad] per axis, zero-filled: a random
    H x W window of the zero-padded image (the background of these data sets is 0)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))                                    # (N, C, H+2p, W+2p)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]                 # (N, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]                 # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows, cols].permute(0, 3, 1, 2)                     # (N, C, H, W), NHWC strides
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


def erase_boxes(n: int, h: int, w: int, p: float = ERASE_PROBABILITY, area: tuple[float, float] = ERASE_AREA,
                aspect: tuple[float, float] = ERASE_ASPECT, device: torch.device | None = None) -> torch.Tensor:
    """(N, 1, H, W) bool: one random rectangle per image, for a fraction p of the images (empty for
    the others). Its area is at most area[1] * H * W (sides are rounded down, then clipped to the image)."""
    u = torch.rand(n, 5, device=device)
    s = (area[0] + u[:, 0] * (area[1] - area[0])) * h * w
    ratio = torch.exp(math.log(aspect[0]) + u[:, 1] * (math.log(aspect[1]) - math.log(aspect[0])))
    bh = torch.sqrt(s * ratio).floor().clamp(1, h)
    bw = torch.sqrt(s / ratio).floor().clamp(1, w)
    top = ((h - bh + 1) * u[:, 2]).floor()[:, None, None]
    left = ((w - bw + 1) * u[:, 3]).floor()[:, None, None]
    r = torch.arange(h, device=device)[None, :, None]
    c = torch.arange(w, device=device)[None, None, :]
    box = (r >= top) & (r < top + bh[:, None, None]) & (c >= left) & (c < left + bw[:, None, None])
    return (box & (u[:, 4] < p)[:, None, None])[:, None]


def random_erase(x: torch.Tensor, p: float = ERASE_PROBABILITY) -> torch.Tensor:
    """Random erasing: a random rectangle of a fraction p of the images filled with uniform noise in
    [0, 1] (Zhong et al.'s random-value fill; the range of the inputs)."""
    n, _, h, w = x.shape
    box = erase_boxes(n, h, w, p, device=x.device)
    return torch.where(box, torch.rand_like(x), x)


_APPLY = {"affine": random_affine, "elastic": random_elastic, "crop": random_crop, "flip": random_flip,
          "erase": random_erase}


def augment(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The training batch after the config's augmentation (`none` returns it unchanged); `kind` is
    an --augment value (see parse_augment)."""
    for part in parse_augment(kind):
        x = _APPLY[part](x)
    return x


# Test-time views: the image itself and four 1-pixel shifts (dy, dx).
TTA_SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def tta_views(x: torch.Tensor, flip: bool = False) -> list[torch.Tensor]:
    """Deterministic shifted copies of a batch (N, C, H, W) for test-time augmentation; with `flip`
    also the left-right mirror of each (10 views). `evaluate --tta` uses the shifts only: mirrors
    tied with them on Fashion-MNIST validation (docs/accuracy.md); bench/tta_compare.py asks for both.

    Shifts move pixels with zero fill (not wrap-around), like a digit written slightly off-centre.
    """
    views = []
    for dy, dx in TTA_SHIFTS:
        if (dy, dx) == (0, 0):
            views.append(x)
            continue
        padded = F.pad(x, (1, 1, 1, 1))
        h, w = x.shape[-2:]
        views.append(padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w])
    return views + [v.flip(-1) for v in views] if flip else views
