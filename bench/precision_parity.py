"""Accuracy parity of the precision policy (issue 22): float32 against `--amp auto`, same seeds.

    python bench/precision_parity.py                       # fast and best, seeds 0-2: hours on 2 cores
    python bench/precision_parity.py --presets fast --seeds 0 --epochs 1 --train-subset 2000  # smoke

Trains every (preset, seed) twice, `--amp off` then `--amp auto`, interleaved, as `mnist-cnn train`
does (train()), and measures each run's test accuracy the way `mnist-cnn evaluate` does (at the
run's own precision). Parity: for each preset the two test means agree within one standard
deviation (|mean fp32 - mean auto| <= the larger of the two stds). Where the CPU lacks native
bf16, `auto` is float32 and both columns are the same computation: the JSON says so. Writes
bench/results/precision-parity-<date>-<host>.json after every run.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mnist_cnn import config as cfg
from mnist_cnn import precision
from mnist_cnn.evaluate import load_split
from mnist_cnn.inference import load_classifier
from mnist_cnn.train import train

ROOT = Path(__file__).resolve().parent


def train_and_test(preset: str, seed: int, amp: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    overrides = dict(seed=seed, amp=amp, threads=args.threads, epochs=args.epochs, train_subset=args.train_subset)
    config = cfg.make_config(preset, **{k: v for k, v in overrides.items() if v})
    result = train(config, out_dir=out, name=f"{preset}-seed{seed}-amp{amp}", force=True,
                   print_fn=lambda s: None, progress=False)
    classifier = load_classifier(result.run_dir, "cpu")
    test = load_split(classifier.config, "test")
    accuracy = float((classifier.logits(test.images).argmax(1) == test.labels).float().mean())
    return {"preset": preset, "seed": seed, "amp_asked": amp, "amp": result.config.amp,
            "compile": result.config.compile, "train_seconds": sum(r.seconds for r in result.history),
            "test_accuracy": accuracy}


def summary(runs: list[dict[str, Any]], preset: str) -> dict[str, Any]:
    def stats(amp: str) -> dict[str, float]:
        values = [r["test_accuracy"] for r in runs if r["preset"] == preset and r["amp_asked"] == amp]
        return {"n": len(values), "mean": statistics.mean(values) if values else float("nan"),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    off, auto = stats("off"), stats("auto")
    return {"preset": preset, "fp32": off, "auto": auto,
            "within_one_std": abs(off["mean"] - auto["mean"]) <= max(off["std"], auto["std"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="fast,best")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default)")
    p.add_argument("--epochs", type=int, default=0, help="override the presets' epochs (0 = theirs; smoke runs)")
    p.add_argument("--train-subset", type=int, default=0, help="train on the first N images (0 = all; smoke runs)")
    p.add_argument("--runs", type=Path, default=None, help="keep the run directories here (default: a temporary one)")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)
    support = precision.bf16_support(torch.device("cpu"))
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "host": socket.gethostname(), "torch": torch.__version__,
                               "native_bf16": support.as_dict(), "args": {k: str(v) for k, v in vars(args).items()},
                               "runs": [], "summary": []}
    if not support.native:
        print(f"note: the {support.reason}, so auto is float32 here: both columns are the same computation")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"precision-parity-{datetime.now():%Y-%m-%d-%H%M}-{socket.gethostname()}.json"
    presets = args.presets.split(",")
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-parity-") as tmp:
        out = args.runs or Path(tmp)
        for preset in presets:
            for seed in map(int, args.seeds.split(",")):
                for amp in ("off", "auto"):  # interleaved: load drifts fall on both alike
                    run = train_and_test(preset, seed, amp, args, out)
                    results["runs"].append(run)
                    print(f"{preset} seed {seed} amp {amp} (= {run['amp']}): test {100 * run['test_accuracy']:.2f}%, "
                          f"{run['train_seconds']:.1f} s", flush=True)
                    path.write_text(json.dumps(results, indent=1) + "\n")
    results["summary"] = [summary(results["runs"], preset) for preset in presets]
    for s in results["summary"]:
        print(f"{s['preset']}: fp32 {100 * s['fp32']['mean']:.2f} +- {100 * s['fp32']['std']:.2f}%, auto "
              f"{100 * s['auto']['mean']:.2f} +- {100 * s['auto']['std']:.2f}%: within one std: {s['within_one_std']}")
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
