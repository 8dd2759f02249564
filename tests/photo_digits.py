"""Photos of digits, generated: printed and handwriting-like fonts on paper, under uneven light.

    python tests/photo_digits.py make [--out tests/data/photos] [--n 300] [--seed 0]
    python tests/photo_digits.py score RUN [--dir tests/data/photos]

`make` draws the committed test set (needs the Debian font packages in FONTS; the tests read the
committed files and need no fonts). Each file is named `NNN-LABEL-STYLE.jpg|png`. `score` prints
a run's accuracy on the set, overall and per style.

What varies, image by image (seeded): the font (thin, regular and bold printed faces, handwriting
faces, and outline digits: only the glyph's contour is drawn), extra stroke weight, size (the
digit's height is 25-75% of the frame, at a random place), rotation (+-8 degrees), paper (tone,
colour cast, low-frequency texture, grain), a lighting gradient, a soft cast shadow across part of
the page, ink colour (black, blue or pencil grey; 1 in 8 is chalk: light ink on a dark board),
focus blur, sensor noise, and JPEG quality 35-90 (1 in 6 is saved as PNG).
"""
from __future__ import annotations

import argparse
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent
PHOTOS = HERE / "data" / "photos"
NAME = re.compile(r"(\d+)-(\d)-([a-z]+)\.(jpg|png)$")
TT = "/usr/share/fonts/truetype"
OT = "/usr/share/fonts/opentype"
# style -> font files (Debian packages: fonts-dejavu, fonts-liberation, fonts-freefont-ttf,
# fonts-comic-neue, fonts-dkg-handwriting, fonts-humor-sans, fonts-breip, fonts-femkeklaver,
# fonts-dancingscript).
FONTS = {
    "thin": [f"{TT}/dejavu/DejaVuSans-ExtraLight.ttf", f"{TT}/freefont/FreeSerif.ttf",
             f"{TT}/liberation/LiberationSerif-Regular.ttf", f"{OT}/comic-neue/ComicNeue-Light.otf"],
    "regular": [f"{TT}/dejavu/DejaVuSans.ttf", f"{TT}/liberation/LiberationSans-Regular.ttf",
                f"{TT}/freefont/FreeSans.ttf", f"{TT}/dejavu/DejaVuSerif.ttf",
                f"{TT}/liberation/LiberationSansNarrow-Regular.ttf", f"{TT}/freefont/FreeMono.ttf"],
    "bold": [f"{TT}/dejavu/DejaVuSans-Bold.ttf", f"{TT}/freefont/FreeSansBold.ttf",
             f"{TT}/liberation/LiberationSerif-Bold.ttf", f"{TT}/liberation/LiberationMono-Bold.ttf"],
    "hand": [f"{TT}/fifthhorseman/dkg.ttf", f"{TT}/breip/Breip.ttf", f"{TT}/femkeklaver/femkeklaver.ttf",
             f"{TT}/humor-sans/Humor-Sans.ttf", f"{OT}/comic-neue/ComicNeue-Regular.otf",
             f"{OT}/dancingscript/DancingScript-Regular.otf", f"{TT}/fifthhorseman/dkgIt.ttf"],
    "outline": [f"{TT}/freefont/FreeSans.ttf", f"{TT}/freefont/FreeSansBold.ttf",
                f"{TT}/dejavu/DejaVuSans-Bold.ttf", f"{TT}/liberation/LiberationSerif-Bold.ttf"],
}
STYLES = tuple(FONTS)


def glyph_mask(digit: int, font_path: str, height: int, style: str, rng: np.random.Generator) -> Image.Image:
    """An "L" mask of one digit, its ink 255, cropped to the ink, about `height` px tall, rotated."""
    font = ImageFont.truetype(font_path, size=int(height * 1.4))
    side = int(height * 2.2)
    extra = int(rng.integers(0, max(2, height // 14))) if style in ("bold", "hand") else 0
    outline = max(1, round(height * rng.uniform(0.02, 0.045)))

    def draw(stroke: int) -> Image.Image:
        mask = Image.new("L", (side, side), 0)
        ImageDraw.Draw(mask).text((side // 2, side // 2), str(digit), fill=255, font=font, anchor="mm",
                                  stroke_width=stroke, stroke_fill=255)
        return mask

    if style == "outline":  # the contour only: the glyph grown by `outline` px, minus the glyph
        mask = Image.fromarray(np.where(np.asarray(draw(0)) > 127, 0, np.asarray(draw(outline))).astype(np.uint8))
    else:
        mask = draw(extra)
    mask = mask.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BICUBIC)
    return mask.crop(mask.getbbox())


def paper(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 reflectance of a sheet: tone, colour cast, blotchy texture and grain."""
    tone = rng.uniform(0.72, 0.97)
    cast = 1 + rng.uniform(-0.06, 0.06, 3)
    coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    blotch = (np.asarray(coarse, np.float32) / 255 - 0.5) * rng.uniform(0.0, 0.12)
    grain = rng.normal(0, rng.uniform(0.005, 0.03), (h, w))
    return np.clip((tone + blotch + grain)[..., None] * cast, 0, 1).astype(np.float32)


def light(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) float32 illumination: a linear gradient in a random direction and, half the time, a
    soft-edged shadow (a hand or a phone) over part of the frame."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs / w + np.sin(angle) * ys / h)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    lit = 1 - rng.uniform(0.0, 0.45) * ramp
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * np.pi)
        edge = np.cos(a) * (xs - w * rng.uniform(0.2, 0.8)) + np.sin(a) * (ys - h * rng.uniform(0.2, 0.8))
        soft = max(2.0, rng.uniform(0.01, 0.08) * max(h, w))
        lit *= 1 - rng.uniform(0.25, 0.55) / (1 + np.exp(-edge / soft))
    return lit.astype(np.float32)


def photo(digit: int, style: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One photo of `digit` in `style`: encoded bytes and the file extension."""
    h, w = int(rng.integers(56, 120)), int(rng.integers(56, 120))
    font = str(rng.choice(FONTS[style]))
    mask = glyph_mask(digit, font, int(min(h, w) * rng.uniform(0.3, 0.75)), style, rng)
    if mask.width >= w - 2 or mask.height >= h - 2:
        mask.thumbnail((w - 4, h - 4), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (w, h), 0)
    canvas.paste(mask, (int(rng.integers(1, w - mask.width)), int(rng.integers(1, h - mask.height))))
    alpha = np.asarray(canvas, np.float32)[..., None] / 255
    chalk = rng.random() < 1 / 8
    if chalk:   # a dark board, light ink
        surface = np.clip(paper(h, w, rng) * rng.uniform(0.12, 0.3), 0, 1)
        ink = np.array([0.85, 0.85, 0.8], np.float32) * rng.uniform(0.8, 1.0)
    else:
        surface = paper(h, w, rng)
        ink = {0: [0.05, 0.05, 0.07], 1: [0.1, 0.12, 0.45], 2: [0.35, 0.35, 0.37]}[int(rng.integers(0, 3))]
        ink = np.array(ink, np.float32) * rng.uniform(0.7, 1.3)
    lit = light(h, w, rng)[..., None]
    rgb = (surface + (ink - surface) * alpha * rng.uniform(0.75, 1.0)) * lit
    rgb = rgb + rng.normal(0, rng.uniform(0.004, 0.03), rgb.shape)
    image = Image.fromarray(np.clip(rgb * 255, 0, 255).round().astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.9))))
    if rng.random() < 0.3:
        image = image.convert("L")
    buf = io.BytesIO()
    if rng.random() < 1 / 6:
        image.save(buf, format="PNG", optimize=True)
        return buf.getvalue(), "png"
    image.save(buf, format="JPEG", quality=int(rng.integers(35, 91)))
    return buf.getvalue(), "jpg"


def make(out: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*"):
        if NAME.match(old.name):
            old.unlink()
    for i in range(n):
        digit, style = i % 10, STYLES[(i // 10) % len(STYLES)]
        data, ext = photo(digit, style, rng)
        (out / f"{i:03d}-{digit}-{style}.{ext}").write_bytes(data)
    total = sum(p.stat().st_size for p in out.glob("*"))
    print(f"{n} photos in {out}, {total / 1e3:.0f} kB")


def load(folder: Path = PHOTOS) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, styles) of a photo set, in name order."""
    files = sorted(p for p in folder.iterdir() if NAME.match(p.name))
    parts = [NAME.match(p.name).groups() for p in files]
    return files, np.array([int(d) for _, d, _, _ in parts]), [s for _, _, s, _ in parts]


def score(run: str, folder: Path = PHOTOS, preprocess=None) -> tuple[float, dict[str, float]]:
    """(accuracy, {style: accuracy}) of a run (or .onnx) on a photo set, through `preprocess`
    (mnist_cnn.preprocess.preprocess unless given another)."""
    import torch

    from mnist_cnn.inference import load_classifier

    if preprocess is None:
        from mnist_cnn.preprocess import preprocess
    files, labels, styles = load(folder)
    views = torch.stack([preprocess(p).image for p in files])
    right = load_classifier(run, "cpu").logits(views).argmax(1).numpy() == labels
    per_style = {s: float(np.mean([r for r, t in zip(right, styles) if t == s])) for s in dict.fromkeys(styles)}
    return float(right.mean()), per_style


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="draw the photo set")
    m.add_argument("--out", type=Path, default=PHOTOS)
    m.add_argument("--n", type=int, default=300)
    m.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="a run's accuracy on the photo set")
    s.add_argument("run")
    s.add_argument("--dir", type=Path, default=PHOTOS)
    args = p.parse_args()
    if args.command == "make":
        make(args.out, args.n, args.seed)
    else:
        total, per_style = score(args.run, args.dir)
        counts = Counter(load(args.dir)[2])
        print(f"{args.run}: {total:.1%} of {sum(counts.values())} photos; "
              + ", ".join(f"{s} {a:.0%} ({counts[s]})" for s, a in per_style.items()))


if __name__ == "__main__":
    main()
