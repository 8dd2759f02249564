"""The lesson recipe's training step (`--preset seed`: the lesson's network, Adam, batch 100) in
variants that keep its math, interleaved round by round so that a drifting machine slows all of
them alike (issue 22, item 6). Prints ms per step and the ratio to train.py's own loop, and saves
bench/results/lesson-step-<date>-<host>.json.

    python bench/lesson_step.py --rounds 6 --steps 110

Variants:
  library            train.py's hot loop (`run_steps`): uint8 batch gathered and scaled, forward,
                     loss, backward, fused Adam, the step's loss and correct count kept as tensors
  bare               the floor of the Python side: the batch pre-scaled to float once for the whole
                     training set, no metrics, no bookkeeping
  compiled-model     `run_steps` on torch.compile(model), what `--compile on` does
  compiled-step      one torch.compile'd function: forward, loss, backward and the optimizer step
  compiled-autograd  the same with compiled autograd (the backward pass traced as well)
  nchw               `run_steps` with channels_last off
  threads-1          `run_steps` on one intra-op thread instead of --threads
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bench import machine_info, train_data
from mnist_cnn import config as cfg
from mnist_cnn.models import create_model
from mnist_cnn.train import Loop, StepLog, run_steps
from mnist_cnn.trainstate import TrainState, make_optimizer

CONFIG = cfg.make_config("seed", epochs=1)
N_IMAGES = 55_000  # the lesson's training split; random pixels: speed does not depend on them
VARIANTS = ("library", "bare", "compiled-model", "compiled-step", "compiled-autograd", "nchw", "threads-1")
Steps = Callable[[torch.Tensor], None]  # runs the steps over one permutation of training indices


def fresh(channels_last: bool = True) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model("seed")
    model = (model.to(memory_format=torch.channels_last) if channels_last else model).train()
    return model, make_optimizer(CONFIG, model)


def library(x_u8: torch.Tensor, y: torch.Tensor, channels_last: bool = True, compiled: bool = False) -> Steps:
    model, optimizer = fresh(channels_last)
    config = cfg.make_config("seed", epochs=1, channels_last=channels_last)
    step_model = torch.compile(model) if compiled else model

    def steps(order: torch.Tensor) -> None:
        n = len(order) // config.batch_size
        state = TrainState.for_model(config, tuple(str(i) for i in range(10)), model, optimizer,
                                     n_train=n * config.batch_size)
        run_steps(state, Loop(train_data(x_u8, y), step_model), order, StepLog(0), time.time())
    return steps


def bare(x_u8: torch.Tensor, y: torch.Tensor) -> Steps:
    model, optimizer = fresh()
    x = (x_u8.float() / 255).contiguous(memory_format=torch.channels_last)

    def steps(order: torch.Tensor) -> None:
        for first in range(0, len(order), CONFIG.batch_size):
            idx = order[first:first + CONFIG.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return steps


def compiled_step(x_u8: torch.Tensor, y: torch.Tensor, compiled_autograd: bool = False) -> Steps:
    model, optimizer = fresh()

    @torch.compile
    def step(images_u8: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = (images_u8.float() / 255).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def steps(order: torch.Tensor) -> None:
        with torch._dynamo.config.patch(compiled_autograd=compiled_autograd):
            for first in range(0, len(order), CONFIG.batch_size):
                idx = order[first:first + CONFIG.batch_size]
                step(x_u8[idx], y[idx])
    return steps


def build(name: str, x_u8: torch.Tensor, y: torch.Tensor) -> Steps:
    return {"library": lambda: library(x_u8, y), "bare": lambda: bare(x_u8, y),
            "compiled-model": lambda: library(x_u8, y, compiled=True),
            "compiled-step": lambda: compiled_step(x_u8, y),
            "compiled-autograd": lambda: compiled_step(x_u8, y, compiled_autograd=True),
            "nchw": lambda: library(x_u8, y, channels_last=False),
            "threads-1": lambda: library(x_u8, y)}[name]()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, the first is the reference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=110, help="steps of each variant per round (an epoch is 550)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or args.rounds < 1 or args.steps < 1 or args.threads < 1:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}" if unknown
                else "--rounds, --steps and --threads must be at least 1")
    torch.manual_seed(0)
    x_u8 = torch.randint(0, 256, (N_IMAGES, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (N_IMAGES,))
    threads = {name: 1 if name == "threads-1" else args.threads for name in names}
    runs = {name: build(name, x_u8, y) for name in names}
    seconds = {name: [] for name in names}
    batch = CONFIG.batch_size
    for rnd in range(-1, args.rounds):  # round -1: warm-up (and compiling), not counted
        for name in names:
            torch.set_num_threads(threads[name])
            order = torch.randperm(N_IMAGES)[:batch * (3 if rnd < 0 else args.steps)]
            started = time.perf_counter()
            runs[name](order)
            if rnd >= 0:
                seconds[name].append(time.perf_counter() - started)
    ms = {name: 1000 * sum(s) / (args.rounds * args.steps) for name, s in seconds.items()}
    print(f"{'variant':18s} {'ms/step':>8s} {'vs ' + names[0]:>12s}")
    for name in names:
        print(f"{name:18s} {ms[name]:8.2f} {ms[name] / ms[names[0]]:11.2f}x")
    result = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
              "ms_per_step": ms, "ratio_to_first": {n: ms[n] / ms[names[0]] for n in names},
              "round_seconds": seconds}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lesson-step-{datetime.now():%Y-%m-%d-%H%M}-{result['machine']['host']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
