"""Writing tiny image-folder data sets (root/<class>/*.png) for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from synthetic import toy_split


def write_image_folder(root: Path, n: int = 300, seed: int = 1, num_classes: int = 10) -> dict[str, np.ndarray]:
    """toy_split images as 28x28 grey PNGs in root/<class>/<i>.png; returns {"<class>/<file>": pixels}."""
    split = toy_split(n, seed, num_classes)
    written = {}
    for i, (image, label) in enumerate(zip(split.images[:, 0].numpy(), split.labels.tolist())):
        key = f"c{label}/{seed}-{i:05d}.png"
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(root / key)
        written[key] = image
    return written
