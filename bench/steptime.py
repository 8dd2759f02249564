"""Training-step time of several networks relative to the first, interleaved so that a loaded or
noisy machine slows all of them alike (used to size a recipe to a time budget; docs/accuracy.md).

    python bench/steptime.py --threads 1 --rounds 10 --steps 10 best resnet:1:32 resnet:1:24

A network is NAME or NAME:DEPTH:WIDTH. Each round runs --steps training steps (batch 128, AdamW,
channels-last, label smoothing 0.1) of every network in turn, with its recipe's augmentation
(resnet: fashion, others: affine); the ratios of the summed times are printed at the end.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mnist_cnn.augment import augment
from mnist_cnn.models import create_model


def build(spec: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    name, *shape = spec.split(":")
    options = dict(depth=int(shape[0]), width=int(shape[1])) if shape else {}
    torch.manual_seed(0)
    model = create_model(name, **options).to(memory_format=torch.channels_last).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("networks", nargs="+")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="steps of each network per round")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    nets = {s: build(s) for s in args.networks}
    x = torch.rand(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)  # (B, 1, 28, 28)
    y = torch.randint(0, 10, (128,))

    def step(spec: str) -> None:
        model, optimizer = nets[spec]
        kind = "fashion" if spec.startswith("resnet") else "affine"
        loss = F.cross_entropy(model(augment(x, kind)), y, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for spec in nets:
        for _ in range(3):  # warm-up: allocator and kernel selection
            step(spec)
    total = dict.fromkeys(nets, 0.0)
    for r in range(1, args.rounds + 1):
        for spec in nets:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(spec)
            total[spec] += time.perf_counter() - start
        print(f"round {r}: " + ", ".join(f"{s} {1000 * t / (r * args.steps):.0f} ms/step" for s, t in total.items()),
              flush=True)
    first = total[args.networks[0]]
    print(f"ratio to {args.networks[0]}: " + ", ".join(f"{s} {t / first:.2f}x" for s, t in total.items()))


if __name__ == "__main__":
    main()
