"""Finding a digit's ink in a grey picture: the steps `preprocess` uses before MNIST's geometry.

A photo's paper is not one tone: light falls off across the page, a hand casts a shadow, the
paper has texture. So the paper's level is estimated (a median over windows wider than strokes),
the ink is what departs from it (darker or lighter, whichever departs more), and Otsu's threshold,
kept above the paper's grain, tells ink from paper. Printed digits add two things MNIST's pen never made: strokes much thinner or
thicker than MNIST's (~2.8 px in the 20 px box, the median over its training set), and outline
faces, where only a glyph's contour is drawn. Both are undone here on a mask 4x the final size.

Arrays are float32 (H, W); ink is bright (high values) on a dark background throughout.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MNIST_STROKE = 2.8            # median stroke width of MNIST's digits in their 20 px box, pixels
STROKE_RANGE = (0.6, 1.6)     # widths within this factor of MNIST_STROKE are left alone
ELONGATED_HOLE = 0.25         # a hole this thin for its length is a glyph's body, not a counter
OUTLINE_RATIO = 2.0           # ... when it is also this much wider than the ink around it


def _pool(image: np.ndarray, size: int, reduce_max: bool) -> np.ndarray:
    """Grey dilation (max) or erosion (min) by a size x size square, as two 1-D passes (cost ~2k
    per pixel, not k^2). The border is treated as absent, not as 0."""
    if size <= 1:
        return image
    x = torch.from_numpy(np.array(image, dtype=np.float32))[None, None]
    x = x if reduce_max else -x
    pad = size // 2                                  # odd size: the output keeps the input's shape
    x = F.max_pool2d(x, (1, size), stride=1, padding=(0, pad))
    x = F.max_pool2d(x, (size, 1), stride=1, padding=(pad, 0))
    return (x if reduce_max else -x)[0, 0].numpy()


def dilate(image: np.ndarray, size: int) -> np.ndarray:
    return _pool(image, size | 1, True)


def erode(image: np.ndarray, size: int) -> np.ndarray:
    return _pool(image, size | 1, False)


def median_background(ink: np.ndarray, size: int, step: int = 2) -> np.ndarray:
    """The median of `ink` over a size x size window (edges reflected), at every `step`-th pixel
    each way: the paper's level wherever ink covers less than half the window. Soft and hard
    shadow edges and gradients pass through (an opening would leave a soft edge's shoulder as ink).
    (ceil(H / step), ceil(W / step)) float32; the caller resizes it to the picture."""
    size |= 1
    pad = min(size // 2, min(ink.shape) - 1)
    padded = np.pad(np.asarray(ink, dtype=np.float32), pad, mode="reflect") if pad > 0 else ink
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * pad + 1, 2 * pad + 1))[::step, ::step]
    return np.median(windows.reshape(*windows.shape[:2], -1), axis=-1).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values`: the level that best splits them into two classes (maximum
    between-class variance). Values above it are ink."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)                          # pixels at or below each bin
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    below, above = weight[:-1], total - weight[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[:-1] * total - total_mass * below) ** 2 / (below * above)
    between = np.nan_to_num(between, nan=-1.0)
    # Between two clean levels every cut scores the same: take the middle of the best ones.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[1:][(best[0] + best[-1]) // 2])


def noise_ceiling(flat: np.ndarray, spread: float = 6.0) -> float:
    """A level the paper's grain and texture stay below: the median plus `spread` robust standard
    deviations (1.4826 x the median absolute deviation). Otsu alone cuts into the grain when the
    ink covers only a few percent of the picture."""
    median = float(np.median(flat))
    return median + spread * 1.4826 * float(np.median(np.abs(flat - median)))


def dark_ink(residual: np.ndarray, gray: np.ndarray) -> bool:
    """Whether the ink is darker than the paper, from `residual` = picture - background: the side
    with more energy beyond the grain's level. With neither (a flat or two-tone picture) the
    commoner tone along the border decides: light there means dark ink."""
    grain = noise_ceiling(np.abs(residual))
    dark = float(np.square(np.minimum(residual + grain, 0.0)).sum())
    light = float(np.square(np.maximum(residual - grain, 0.0)).sum())
    if dark + light > 1e-6 * residual.size:
        return dark > light
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return bool(np.median(border) > 0.5)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the image's edge counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def stroke_width(mask: np.ndarray) -> float:
    """Mean width of the strokes in a binary mask, pixels: area over half the boundary length
    (a stroke of width w and length L has area wL and about 2L boundary pixels)."""
    edge = int(boundary(mask).sum())
    return 2.0 * float(mask.sum()) / edge if edge else 0.0


def label(mask: np.ndarray, diagonal: bool = True) -> np.ndarray:
    """Connected components of a binary mask (8-neighbour, or 4 without `diagonal`): int64 labels,
    0 outside the mask. Runs of pixels along each row are joined with the runs they touch in the
    row above (union-find over runs: a few hundred on a 100 px mask, about a millisecond)."""
    h, w = mask.shape
    reach = 1 if diagonal else 0
    runs: list[tuple[int, int, int]] = []
    parent: list[int] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    above: list[int] = []
    for y in range(h):
        steps = np.diff(np.concatenate(([0], mask[y].astype(np.int8), [0])))
        row = []
        for start, end in zip(np.flatnonzero(steps == 1).tolist(), np.flatnonzero(steps == -1).tolist()):
            parent.append(len(runs))
            row.append(len(runs))
            runs.append((y, start, end))
            for other in above:
                if runs[other][1] < end + reach and runs[other][2] > start - reach:
                    parent[root(other)] = root(row[-1])
        above = row
    labels = np.zeros((h, w), dtype=np.int64)
    for i, (y, start, end) in enumerate(runs):
        labels[y, start:end] = root(i) + 1
    return labels


def holes(mask: np.ndarray) -> np.ndarray:
    """Labels of the background regions that the ink encloses (not reached from the border)."""
    outside = label(np.pad(~mask, 1), diagonal=False)[1:-1, 1:-1]   # 4-neighbour: ink joins diagonally
    border = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
    return np.where(np.isin(outside, border), 0, outside)


def fill_outlines(mask: np.ndarray) -> np.ndarray:
    """`mask` with the bodies of outline glyphs filled in.

    An enclosed hole is a glyph body drawn as a contour when it is stroke-like (thin for its
    length, ELONGATED_HOLE) and much wider than the ink around it (OUTLINE_RATIO): the counters of
    0, 4, 6, 8, 9 are round or as narrow as the pen, and stay open.
    """
    # A contour drawn 1-2 px wide has gaps after thresholding; close them (3 px) before looking.
    closed = erode(dilate(mask.astype(np.float32), 3), 3) > 0.5
    regions = holes(closed)
    if not regions.any():
        return mask
    ink_width = stroke_width(closed)
    filled = mask.copy()
    for value in np.unique(regions[regions > 0]):
        hole = regions == value
        ys, xs = np.nonzero(hole)
        length = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        width = stroke_width(hole)
        if width < ELONGATED_HOLE * length and width > OUTLINE_RATIO * ink_width:
            filled |= hole
    return filled


def normalise_stroke(grey: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """Thicken or thin `grey` (ink in [0, 1], `mask` its ink) so its strokes are about MNIST's
    width once the image is shrunk by `scale` (pixels here per pixel in the 20 px box)."""
    width = stroke_width(mask) / scale              # in final pixels
    target = MNIST_STROKE
    if width <= 0 or STROKE_RANGE[0] * target <= width <= STROKE_RANGE[1] * target:
        return grey
    change = int(round((target - width) * scale))   # a square of side s changes the width by s - 1
    if change > 0:
        return dilate(grey, change + 1)
    # Thinning stops short of erasing the thinnest parts: at most a third of the mean width.
    return erode(grey, min(-change, int(width * scale / 3)) + 1)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre of a 2-D array."""
    total = float(image.sum())
    if total <= 0:
        return (image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2
    ys, xs = np.indices(image.shape)
    return float((ys * image).sum() / total), float((xs * image).sum() / total)
