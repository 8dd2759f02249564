"""Accuracy of a training recipe over several seeds: the README's results table comes from this.

    python bench/recipes.py --preset best --dataset mnist --seeds 0 1 2            # the full measurement
    python bench/recipes.py --preset default --dataset fashion-mnist --seeds 0 --set epochs=3

Trains one run per seed (runs/recipes/<preset>-<dataset>-s<seed>, reused when already complete),
evaluates each on the TEST split with and without test-time augmentation, and prints per-seed lines
plus one markdown row: test accuracy mean +- sample std over the seeds, wall time per run, machine.
Everything also goes to bench/results/recipes-<preset>-<dataset>-<date>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from mnist_cnn import config as cfg
from mnist_cnn.evaluate import evaluate
from mnist_cnn.runs import read_run_info
from mnist_cnn.train import train



def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu}, {torch.get_num_threads()} threads (os.cpu_count {os.cpu_count()})"


def parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set wants key=value, not {item!r}")
        out[key.replace("-", "_")] = value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="best")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. epochs=3")
    p.add_argument("--out", default="runs/recipes", help="parent directory of the runs")
    args = p.parse_args()
    overrides = parse_set(args.set)
    suffix = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    rows = []
    for seed in args.seeds:
        config = cfg.make_config(args.preset, dataset=args.dataset, seed=seed, **overrides)
        name = f"{args.preset}-{args.dataset}{suffix}-s{seed}"
        run = Path(args.out) / name
        if run.is_dir() and read_run_info(run)["status"] == "complete":
            print(f"{name}: reusing the complete run")
        else:
            train(config, out_dir=args.out, name=name, force=True, progress=False)
        seconds = sum(r["seconds"] for r in _metrics(run))
        plain = evaluate(run, "test", device="auto").accuracy
        tta = evaluate(run, "test", tta=True, device="auto").accuracy
        rows.append({"seed": seed, "run": str(run), "test_accuracy": plain, "test_accuracy_tta": tta,
                     "train_seconds": seconds, "epochs": config.epochs})
        print(f"seed {seed}: test accuracy {plain:.4f} (TTA {tta:.4f}), training {seconds / 60:.1f} min", flush=True)
    ensemble = evaluate([r["run"] for r in rows], "test", device="auto").accuracy if len(rows) > 1 else None
    acc_mean, acc_std = mean_std([r["test_accuracy"] for r in rows])
    tta_mean, tta_std = mean_std([r["test_accuracy_tta"] for r in rows])
    minutes = sum(r["train_seconds"] for r in rows) / len(rows) / 60
    where = machine()
    summary = {"preset": args.preset, "dataset": args.dataset, "overrides": overrides, "seeds": rows,
               "test_accuracy_mean": acc_mean, "test_accuracy_std": acc_std, "tta_mean": tta_mean, "tta_std": tta_std,
               "ensemble_accuracy": ensemble, "minutes_per_run": minutes, "machine": where,
               "command": " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    out = results / f"recipes-{args.preset}-{args.dataset}{suffix}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    settings = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "as preset"
    print(f"| {args.dataset} | {args.preset} ({settings}) | {100 * acc_mean:.2f} ± {100 * acc_std:.2f} "
          f"(n={len(rows)}) | {100 * tta_mean:.2f} ± {100 * tta_std:.2f} | "
          f"{'%.2f' % (100 * ensemble) if ensemble is not None else '-'} | {minutes:.1f} min | {where} |")
    print(f"wrote {out}")


def _metrics(run: Path) -> list[dict[str, float]]:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


if __name__ == "__main__":
    main()
