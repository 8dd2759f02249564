"""Data-parallel training across processes, started by torchrun (one process per CPU group or GPU).

    torchrun --nproc-per-node 2 -m mnist_cnn train --batch-size 128 ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT) in each process's
environment; `init_distributed` reads them and joins the process group (gloo on CPU, NCCL on
GPU). Without those variables everything here is a no-op and training is single-process.

How a step is split: every rank draws the SAME permutation from the seeded data-order generator
and takes its own contiguous slice of each global batch (`config.batch_size` images; each rank
gets batch_size / world_size). DistributedDataParallel averages the gradients, so one step
equals a single-process step on the whole global batch, and the data order is the same as in a
single-process run with the same seed.

Who does what: all ranks train, agree on stopping, and evaluate a shard of the validation set;
only rank 0 writes the run directory (run.json, logs, TensorBoard, metrics.csv, checkpoints,
plots). On resume every rank loads the same checkpoint, which holds rank 0's RNG states; all
ranks were seeded alike and draw the same random numbers, so restoring rank 0's states on every
rank continues each one's streams exactly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mnist_cnn.errors import MnistCnnError, UsageError
from mnist_cnn.inference import loss_and_accuracy

T = TypeVar("T")

# A rank waits at most this long for the others at a collective (a crashed peer is normally
# noticed by torchrun first, which then stops every rank).
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0          # this process's index among all processes, 0 = the one that writes
    world_size: int = 1    # number of processes training together
    local_rank: int = 0    # index on this machine: picks the GPU
    enabled: bool = False  # True when a process group with world_size > 1 is in use

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()
_started_here = False  # whether init_distributed joined the group (and cleanup should leave it)


def env_info() -> DistInfo:
    """What torchrun's variables say (no process group is joined). SINGLE without them."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if world_size <= 1:
        return SINGLE
    if not 0 <= rank < world_size:
        raise UsageError(f"RANK {rank} is outside 0..{world_size - 1} (WORLD_SIZE {world_size})")
    return DistInfo(rank, world_size, local_rank, enabled=True)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun's variables describe; SINGLE when there are none.

    Returns whether this call started the group in `DistInfo.enabled`; a group the caller already
    started is used as it is. The backend follows the device: NCCL for CUDA, gloo for CPU.
    """
    global _started_here
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                        enabled=dist.get_world_size() > 1)
    info = env_info()
    if not info.enabled:
        return SINGLE
    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed; run without torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)  # before NCCL init, so each rank owns its own GPU
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank,
                                world_size=info.world_size, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as e:
        raise MnistCnnError(f"could not join the torchrun process group: {str(e).splitlines()[0]}") from None
    _started_here = True
    return info


def device_for(device: torch.device, info: DistInfo) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK); CPU stays CPU."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def cleanup(info: DistInfo) -> None:
    """Leave the process group, if `init_distributed` started it (a caller's group stays)."""
    global _started_here
    if info.enabled and _started_here and dist.is_initialized():
        dist.destroy_process_group()
        _started_here = False


def batch_shard(batch_size: int, info: DistInfo) -> slice:
    """This rank's slice of every global batch (all of it when single-process)."""
    if batch_size % info.world_size:
        raise UsageError(f"batch_size {batch_size} does not divide evenly among {info.world_size} processes; "
                         f"use a multiple of {info.world_size} (the global batch is split across ranks)")
    per_rank = batch_size // info.world_size
    return slice(info.rank * per_rank, (info.rank + 1) * per_rank)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when it is True on any (a collective, and a host sync)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(fn: Callable[[], T], info: DistInfo) -> T:
    """Run `fn` on rank 0 only and hand its result (or its error) to every rank.

    Used for what must happen once with one answer, e.g. creating the run directory, whose
    default name holds the time. Other ranks re-raise rank 0's MnistCnnError with its exit code.
    """
    if not info.enabled:
        return fn()
    box: list[Any] = [None]
    if info.is_main:
        try:
            box[0] = ("ok", fn())
        except MnistCnnError as e:
            box[0] = ("error", str(e), e.exit_code)
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        error = MnistCnnError(f"rank 0 failed: {box[0][1]}")
        error.exit_code = box[0][2]
        raise error
    return box[0][1]


# Under torchrun a stop signal must be acted on by every rank at the same step (the next step's
# gradient all-reduce would wait forever otherwise). Agreeing costs a collective and a host
# sync, so ranks compare notes only every STOP_POLL_STEPS steps and at every epoch end; torchrun
# gives workers 30 s after forwarding a signal, far longer than 10 steps take.
STOP_POLL_STEPS = 10


class Strategy(Protocol):
    """What the training loop asks of its processes; `SingleProcess` and `DDP` below answer it,
    and the loop never asks which one it has (Lightning's Strategy, reduced to what we use)."""

    device: torch.device
    info: DistInfo

    @property
    def is_main(self) -> bool: ...
    def check_batch(self, batch_size: int) -> None: ...
    def shard(self, batch_indices: torch.Tensor) -> torch.Tensor: ...
    def wrap(self, model: nn.Module) -> nn.Module: ...
    def reduce_steps(self, step_loss: torch.Tensor, step_correct: torch.Tensor) -> None: ...
    def loss_and_accuracy(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          channels_last: bool) -> tuple[float, float]: ...
    def agreed_stop(self, signal_name: str | None, step: int | None = None) -> str | None: ...
    def main_decides(self, flag: bool) -> bool: ...
    def run_once(self, fn: Callable[[], T]) -> T: ...
    def barrier(self) -> None: ...
    def close(self) -> None: ...


class SingleProcess:
    """The training loop's view of its processes when there is one: every method is the identity."""

    info = SINGLE

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run directory and prints."""
        return self.info.is_main

    def check_batch(self, batch_size: int) -> None:
        batch_shard(batch_size, self.info)

    def shard(self, batch_indices: torch.Tensor) -> torch.Tensor:
        """This process's part of a global batch (B,) of training-set indices."""
        return batch_indices

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to step with (state_dict and evaluation keep using `model` itself)."""
        return model

    def reduce_steps(self, step_loss: torch.Tensor, step_correct: torch.Tensor) -> None:
        """Per-step metrics of this process's shards -> the global batch's, in place."""

    def loss_and_accuracy(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          channels_last: bool) -> tuple[float, float]:
        """(mean loss, accuracy) of `model` on a split."""
        return loss_and_accuracy(model, images, labels, channels_last=channels_last)

    def agreed_stop(self, signal_name: str | None, step: int | None = None) -> str | None:
        """The stop signal every process acts on now (`step` None: an epoch end)."""
        return signal_name

    def main_decides(self, flag: bool) -> bool:
        """The main process's `flag`, on every process."""
        return flag

    def run_once(self, fn: Callable[[], T]) -> T:
        """`fn()` run by the main process, its result (or MnistCnnError) handed to every process."""
        return fn()

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class DDP(SingleProcess):
    """torchrun's ranks: DistributedDataParallel, batch shards, collectives for metrics and stops.

    See the module docstring for how a step is split and who writes what.
    """

    def __init__(self, device: torch.device, info: DistInfo) -> None:
        super().__init__(device_for(device, info))
        self.info = info
        self._shard = slice(None)  # this rank's part of each global batch; set by check_batch

    def check_batch(self, batch_size: int) -> None:
        self._shard = batch_shard(batch_size, self.info)

    def shard(self, batch_indices: torch.Tensor) -> torch.Tensor:
        return batch_indices[self._shard]

    def wrap(self, model: nn.Module) -> nn.Module:
        # DDP broadcasts rank 0's weights at construction: load a checkpoint before wrapping.
        device = self.device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def reduce_steps(self, step_loss: torch.Tensor, step_correct: torch.Tensor) -> None:
        # SUM then divide for the mean: gloo has no AVG.
        dist.all_reduce(step_loss, op=dist.ReduceOp.SUM)
        step_loss.div_(self.info.world_size)
        dist.all_reduce(step_correct, op=dist.ReduceOp.SUM)

    def loss_and_accuracy(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          channels_last: bool) -> tuple[float, float]:
        """Each rank evaluates a contiguous shard; results combine weighted by shard size."""
        n, rank, world = len(labels), self.info.rank, self.info.world_size
        lo, hi = n * rank // world, n * (rank + 1) // world
        sums = torch.zeros(3, dtype=torch.float64)  # loss * count, accuracy * count, count
        if hi > lo:
            loss, accuracy = loss_and_accuracy(model, images[lo:hi], labels[lo:hi], channels_last=channels_last)
            sums += torch.tensor([loss * (hi - lo), accuracy * (hi - lo), hi - lo], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            sums = sums.cuda()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        total = float(sums[2])
        return float(sums[0]) / total, float(sums[1]) / total

    def agreed_stop(self, signal_name: str | None, step: int | None = None) -> str | None:
        if step is not None and step % STOP_POLL_STEPS:
            return None
        if any_rank(signal_name is not None, self.info, self.device):
            return signal_name or "a signal to another rank"
        return None

    def main_decides(self, flag: bool) -> bool:
        return any_rank(flag and self.is_main, self.info, self.device)

    def run_once(self, fn: Callable[[], T]) -> T:
        return from_main(fn, self.info)

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        cleanup(self.info)


def make_strategy(device: torch.device) -> Strategy:
    """`DDP` when torchrun started this process (it joins the group now), else `SingleProcess`."""
    info = init_distributed(device)
    return DDP(device, info) if info.enabled else SingleProcess(device)
