"""Data augmentation, batched on the device: one random affine warp per image, no per-sample Python.

`random_affine` draws a rotation, scale and shift for every image of the batch, builds the (N, 2, 3)
matrices at once and resamples the whole batch with one `grid_sample` call. Randomness comes from
torch's global generator on the batch's device, which the training checkpoint saves, so a resumed
run draws the same warps (bit-exact resume).

`tta_views` gives fixed (deterministic) shifted copies for test-time augmentation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "affine")

# Magnitudes for digits: small enough that a 6 never becomes a 9 or a 1 a 7.
ROTATE_DEGREES = 10.0   # uniform in [-10, +10] degrees
SCALE = 0.10            # zoom uniform in [0.9, 1.1]
SHIFT_PIXELS = 2.0      # uniform in [-2, +2] pixels on each axis (of 28)


def random_affine(x: torch.Tensor, degrees: float = ROTATE_DEGREES, scale: float = SCALE,
                  shift_pixels: float = SHIFT_PIXELS) -> torch.Tensor:
    """Randomly rotated, scaled and shifted copy of a float batch (N, C, H, W); background fills with 0."""
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
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.contiguous(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def augment(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The training batch after the config's augmentation (`none` returns it unchanged)."""
    if kind == "none":
        return x
    if kind == "affine":
        return random_affine(x)
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
