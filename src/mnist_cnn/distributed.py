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
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from mnist_cnn.errors import MnistCnnError, UsageError

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


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """The module to train with: DistributedDataParallel around `model` under torchrun.

    Keep using the bare `model` for evaluation and state_dict (no 'module.' prefixes). DDP
    broadcasts rank 0's weights at construction, so load a checkpoint before wrapping.
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def batch_shard(batch_size: int, info: DistInfo) -> slice:
    """This rank's slice of every global batch (all of it when single-process)."""
    if batch_size % info.world_size:
        raise UsageError(f"batch_size {batch_size} does not divide evenly among {info.world_size} processes; "
                         f"use a multiple of {info.world_size} (the global batch is split across ranks)")
    per_rank = batch_size // info.world_size
    return slice(info.rank * per_rank, (info.rank + 1) * per_rank)


def all_reduce_sum_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In place: the sum over ranks (a collective: every rank must call it)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In place: the mean over ranks. SUM then divide: gloo has no AVG."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(info.world_size)
    return tensor


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    return float(all_reduce_mean_(torch.tensor([value], dtype=torch.float64), info))


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when it is True on any (a collective, and a host sync)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sharded_evaluate(evaluate: Callable[..., tuple[float, float]], info: DistInfo) -> Callable[..., tuple[float, float]]:
    """`evaluate(model, images, labels, **kw) -> (mean loss, accuracy)` run on this rank's
    contiguous shard of the split, combined across ranks weighted by shard size. Same signature."""
    if not info.enabled:
        return evaluate

    def run(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kw: Any) -> tuple[float, float]:
        n = len(labels)
        lo, hi = n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size
        sums = torch.zeros(3, dtype=torch.float64)  # loss * count, accuracy * count, count
        if hi > lo:
            loss, accuracy = evaluate(model, images[lo:hi], labels[lo:hi], **kw)
            sums += torch.tensor([loss * (hi - lo), accuracy * (hi - lo), hi - lo], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            sums = sums.cuda()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        total = float(sums[2])
        return float(sums[0]) / total, float(sums[1]) / total

    return run


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


class NullLogger:
    """Stands in for RunLogger on ranks other than 0: accepts every call, writes nothing."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name == "epoch_bar":
            return lambda *args, **kwargs: _NullBar()
        return lambda *args, **kwargs: None


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


# Under torchrun a stop signal must be acted on by every rank at the same step (the next step's
# gradient all-reduce would wait forever otherwise). Agreeing costs a collective and a host
# sync, so ranks compare notes only every STOP_POLL_STEPS steps and at every epoch end; torchrun
# gives workers 30 s after forwarding a signal, far longer than 10 steps take.
STOP_POLL_STEPS = 10


def agreed_signal(signal_name: str | None, info: DistInfo, device: torch.device,
                  step: int | None = None) -> str | None:
    """The stop signal every rank acts on now. Single-process: `signal_name` itself. Under
    torchrun: at steps divisible by STOP_POLL_STEPS and where `step` is None (epoch ends), the
    same answer on every rank; elsewhere None."""
    if not info.enabled:
        return signal_name
    if step is not None and step % STOP_POLL_STEPS:
        return None
    if any_rank(signal_name is not None, info, device):
        return signal_name or "a signal to another rank"
    return None
