"""How long must a budget time training steps to predict the sustained step? Times a preset's
steps one by one, as the loop takes them (random batch, augmentation, optimizer step, EMA update),
then prints, for windows of several lengths, the spread of their mean step time against the whole
run's mean; saves bench/results/step-windows-<date>-<host>.json with every step's time.

    python bench/step_windows.py --preset best --steps 1400      # about 2.5 minutes on 2 cores

Random pixels: the step's speed does not depend on them. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime
from pathlib import Path

import torch

from bench import machine_info
from mnist_cnn import config as cfg
from mnist_cnn.augment import augment
from mnist_cnn.ema import EMA
from mnist_cnn.inference import to_input
from mnist_cnn.models import create_model
from mnist_cnn.train import train_step
from mnist_cnn.trainstate import make_optimizer

N_IMAGES = 55_000
WINDOWS = (20, 50, 100, 200, 460)


def step_times(config: cfg.TrainConfig, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps, after one warm-up step."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (N_IMAGES, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (N_IMAGES,))
    model = create_model(config.model, width=config.width, depth=config.depth)
    model = model.to(memory_format=torch.channels_last) if config.channels_last else model
    optimizer, ema = make_optimizer(config, model), EMA(model, config.ema) if config.ema else None
    model.train()
    times = []
    for step in range(-1, steps):
        started = time.perf_counter()
        idx = torch.randint(N_IMAGES, (config.batch_size,))
        loss, _ = train_step(model, optimizer, augment(to_input(x[idx], config.channels_last), config.augment),
                             y[idx], label_smoothing=config.label_smoothing)
        if ema is not None:
            ema.update(model, step + 1)
        float(loss)
        if step >= 0:
            times.append(time.perf_counter() - started)
    return times


def window_spread(ms: list[float], window: int) -> dict[str, float]:
    """The means of consecutive `window`-step windows: lowest, highest, and the worst relative miss."""
    means = [statistics.mean(ms[i:i + window]) for i in range(0, len(ms) - window + 1, window)]
    overall = statistics.mean(ms)
    return {"windows": len(means), "min_ms": min(means), "max_ms": max(means),
            "worst_miss": max(abs(m / overall - 1) for m in means)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="best", choices=cfg.preset_names())
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    if args.steps < WINDOWS[0]:
        p.error(f"--steps must be at least {WINDOWS[0]}")
    torch.set_num_threads(args.threads)
    config = cfg.make_config(args.preset, threads=args.threads)
    ms = [1000 * s for s in step_times(config, args.steps)]
    spread = {w: window_spread(ms, w) for w in WINDOWS if w <= len(ms)}
    print(f"{args.preset}: {len(ms)} steps, mean {statistics.mean(ms):.1f} ms, threads {args.threads}")
    print(f"{'window':>6} {'seconds':>7} {'windows':>7} {'min ms':>7} {'max ms':>7} {'worst miss':>10}")
    for w, s in spread.items():
        print(f"{w:>6} {w * statistics.mean(ms) / 1000:>7.1f} {s['windows']:>7} {s['min_ms']:>7.1f} "
              f"{s['max_ms']:>7.1f} {100 * s['worst_miss']:>9.0f}%")
    result = {"preset": args.preset, "threads": args.threads, "machine": machine_info(),
              "mean_ms": statistics.mean(ms), "windows": spread, "step_ms": ms}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"step-windows-{datetime.now():%Y-%m-%d-%H%M}-{result['machine']['host']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
