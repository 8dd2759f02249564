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

AUGMENTATIONS = ("none", "affine", "elastic")

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


def augment(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The training batch after the config's augmentation (`none` returns it unchanged)."""
    if kind == "none":
        return x
    if kind == "affine":
        return random_affine(x)
    if kind == "elastic":
        return random_elastic(x)
    raise ValueError(f"unknown augmentation {kind!r}; choose one of: {', '.join(AUGMENTATIONS)}")


# Test-time views: the image itself and four 1-pixel shifts (dy, dx).
TTA_SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Deterministic shifted copies of a batch (N, C, H, W) for test-time augmentation.

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
    return views
