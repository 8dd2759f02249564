"""Learning-rate range test (Smith 2015; fastai's `lr_find`): train a fresh model for a few
hundred steps while the rate grows exponentially from `start` to `end`, and read off where the
loss falls fastest.

The model is built from the config and thrown away afterwards: no run directory is made; the
curve goes to lr-find.csv and lr-find.png in `out_dir`. Suggested rate: the steepest descent of
the smoothed loss against log(lr) (Lightning's rule); the rate at the minimum / 10 (fastai's
older rule) is reported beside it. The loss is smoothed by an exponential moving average
(beta 0.98, bias-corrected, as fastai), and the sweep stops once it exceeds 4x its best.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mnist_cnn.augment import augment
from mnist_cnn.config import LrFindSettings, TrainConfig
from mnist_cnn import data  # data.load_dataset is looked up per call: tests swap in synthetic data
from mnist_cnn.errors import UsageError
from mnist_cnn.fileio import atomic_write_bytes
from mnist_cnn.inference import select_device, to_input
from mnist_cnn.models import create_model
from mnist_cnn.train import train_step
from mnist_cnn.precision import resolve_amp
from mnist_cnn.trainstate import make_optimizer, seed_everything

SMOOTHING = 0.98     # EMA factor of the loss per step (~50-step memory)
DIVERGED = 4.0       # stop when the smoothed loss exceeds this multiple of its best
SKIP_START = 10      # first steps ignored by the suggestion: the smoothed loss is still settling


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]            # raw loss per step
    smoothed: list[float]          # bias-corrected EMA of the loss
    suggested_lr: float            # steepest descent of the smoothed loss
    min_lr_over_10: float          # rate at the smoothed loss's minimum, / 10
    diverged_at: float | None      # rate where the sweep stopped early, None if it ran all steps
    csv_path: Path | None = None
    png_path: Path | None = None


def lr_find(config: TrainConfig, dataset: Any = None, start: float = LrFindSettings.start,
            end: float = LrFindSettings.end, steps: int = LrFindSettings.steps,
            out_dir: str | Path | None = LrFindSettings.out_dir) -> LrFindResult:
    """Sweep the learning rate over `steps` optimizer steps; write CSV + PNG into `out_dir`."""
    if not (0 < start < end) or not math.isfinite(end):
        raise UsageError(f"--start and --end must satisfy 0 < start < end, not {start:g} .. {end:g}")
    if steps < SKIP_START + 5:
        raise UsageError(f"--steps must be at least {SKIP_START + 5} for a curve to read, not {steps}")
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    if dataset is None:
        dataset = data.load_dataset(config.dataset, config.data_dir, config.validation_size)
    device = select_device(config.device)
    bf16 = resolve_amp(config.amp, config.preset, device) == "bf16"  # the precision the run it sizes trains at
    images, labels = dataset.train.images, dataset.train.labels
    if config.train_subset:
        images, labels = images[:config.train_subset], labels[:config.train_subset]
    if len(labels) < config.batch_size:
        raise UsageError(f"batch_size {config.batch_size} is larger than the training set ({len(labels)} images)")
    model = create_model(config.model, num_classes=len(dataset.class_names), in_channels=images.shape[1],
                         depth=config.depth, width=config.width).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    order = torch.Generator().manual_seed(config.seed)
    model.train()

    def step_loss(lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(labels), (config.batch_size,), generator=order)
        x = augment(to_input(images[idx].to(device), config.channels_last), config.augment)
        loss, _ = train_step(model, optimizer, x, labels[idx].to(device), config.label_smoothing, amp=bf16)
        return loss.item()  # one sync per step: the stop rule needs the value now

    result = sweep(start, end, steps, step_loss)
    if out_dir is not None:
        write_outputs(result, Path(out_dir), config)
    return result


def sweep(start: float, end: float, steps: int, step_loss: Callable[[float], float]) -> LrFindResult:
    """Grow the rate geometrically from `start` to `end` over `steps` calls of `step_loss(lr)` (one
    training step at that rate, returning its loss); stop early once the smoothed loss diverges."""
    ratio = (end / start) ** (1 / (steps - 1))   # the rate is multiplied by this each step
    lrs, losses, smoothed = [], [], []
    average, best, diverged_at = 0.0, math.inf, None
    for step in range(steps):
        lr = start * ratio ** step
        value = step_loss(lr)
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smooth = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr), losses.append(value), smoothed.append(smooth)
        best = min(best, smooth)
        if not math.isfinite(smooth) or smooth > DIVERGED * best:
            diverged_at = lr
            break
    suggested, min_over_10 = suggest(lrs, smoothed)
    return LrFindResult(lrs, losses, smoothed, suggested, min_over_10, diverged_at)


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(steepest descent of the smoothed loss vs log lr, rate at its minimum / 10)."""
    usable = [(lr, s) for lr, s in zip(lrs, smoothed) if math.isfinite(s)][SKIP_START:]
    if len(usable) < 3:
        raise UsageError("the loss diverged within the first steps; lower --start or --end")
    best_i = min(range(len(usable)), key=lambda i: usable[i][1])
    head = usable[:best_i + 1] if best_i >= 2 else usable
    slopes = [(head[i + 1][1] - head[i - 1][1]) / math.log(head[i + 1][0] / head[i - 1][0])
              for i in range(1, len(head) - 1)]
    steepest = min(range(len(slopes)), key=lambda i: slopes[i]) + 1
    return head[steepest][0], usable[best_i][0] / 10


def write_outputs(r: LrFindResult, out_dir: Path, config: TrainConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {out_dir}: {e.strerror or e}") from None
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["step", "lr", "loss", "smoothed_loss"])
    writer.writerows((i, lr, loss, s) for i, (lr, loss, s) in enumerate(zip(r.lrs, r.losses, r.smoothed)))
    r.csv_path, r.png_path = out_dir / "lr-find.csv", out_dir / "lr-find.png"
    atomic_write_bytes(r.csv_path, text.getvalue().encode())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(r.lrs, r.losses, color="0.8", lw=0.8, label="loss per step")
    ax.plot(r.lrs, r.smoothed, color="C0", label="smoothed loss")
    ax.axvline(r.suggested_lr, color="C3", ls="--", label=f"steepest descent {r.suggested_lr:.2g}")
    ax.axvline(r.min_lr_over_10, color="C2", ls=":", label=f"minimum / 10 {r.min_lr_over_10:.2g}")
    ax.set_xscale("log")
    finite = [s for s in r.smoothed if math.isfinite(s)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), min(finite) * DIVERGED) * 1.1)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {config.model}, {config.optimizer}, batch {config.batch_size}")
    ax.legend()
    fig.savefig(r.png_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
