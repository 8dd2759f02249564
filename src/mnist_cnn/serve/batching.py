"""Forward passes shared between requests: images that arrive while one batch runs go in the next.

A single 28x28 image costs about as much as 5 in one pass on a CPU (the fully connected weights
are read once per pass either way), so under load this multiplies throughput; when idle a request
goes alone at once, with no waiting window. The pass runs on the event loop itself: a batch of 64
takes a few ms, less than handing it to a thread and back costs under load (measured: 1.6 vs
1.9 ms of CPU per request at 20 connections).
"""
from __future__ import annotations

import asyncio
from typing import Callable

import torch

MAX_IMAGES = 64    # per forward pass (the loop is busy meanwhile); the rest wait for the next one


class Batcher:
    """`await batcher.run(images)` -> their probability rows, computed in a batch with others."""

    def __init__(self, forward: Callable[[torch.Tensor], list[list[float]]]) -> None:
        self.forward = forward                      # (N, 1, 28, 28) uint8 -> N rows
        self.queue: list[tuple[torch.Tensor, asyncio.Future]] = []
        self.running = False

    async def run(self, images: torch.Tensor) -> list[list[float]]:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((images, future))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self.drain())
        return await future

    async def drain(self) -> None:
        try:
            await asyncio.sleep(0)                  # requests ready on this loop turn join the first batch
            while self.queue:
                batch, n = [], 0
                while self.queue and (not batch or n + len(self.queue[0][0]) <= MAX_IMAGES):
                    batch.append(self.queue.pop(0))
                    n += len(batch[-1][0])
                try:
                    rows = self.forward(torch.cat([images for images, _ in batch]))
                except Exception as e:  # noqa: BLE001 (handed to every waiting request)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for images, future in batch:
                    if not future.done():            # a request cancelled meanwhile (client gone)
                        future.set_result(rows[:len(images)])
                    rows = rows[len(images):]
        finally:
            self.running = False
