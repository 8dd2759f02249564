"""`TrainState`: everything a training run changes as it goes, and the one thing a checkpoint holds.

Model, optimizer, schedule, EMA weights, every random-number stream (torch, CUDA, numpy, Python,
and the data-order generator), the counters and the epoch's per-step metrics. `state_dict()` is
what a checkpoint saves; `load_state_dict()` is what resume restores, so a resumed run continues
bit for bit. The checkpoint layout is format version 1 (checkpoint.py): evaluate, export and
the other commands read its "config", "class_names", "model", "ema" and "global_step" keys.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnist_cnn import config as cfg
from mnist_cnn.checkpoint import load_model_state
from mnist_cnn.config import TrainConfig
from mnist_cnn.ema import EMA
from mnist_cnn.errors import CheckpointError, UsageError
from mnist_cnn.models import create_model
from mnist_cnn.runlog import EpochRecord

# What a checkpoint needs beyond config and weights to continue a run (evaluate needs only those).
RESUME_KEYS = ("optimizer", "schedule", "rng", "history", "epoch", "step_in_epoch", "global_step",
               "epoch_seconds", "step_loss", "step_correct")


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    # fused=True: one kernel updates every tensor instead of ~10 ops per tensor, the same update
    # rule (agrees with the per-tensor loop to ~1e-8), and no host syncs on CUDA.
    if config.optimizer == "adam":
        # Adam's defaults (betas 0.9/0.999, eps 1e-8) equal TF1's AdamOptimizer's.
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    # Nesterov needs momentum: torch refuses nesterov=True with momentum 0 (plain SGD then).
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
                           weight_decay=config.weight_decay)


def make_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    if config.schedule == "constant":
        return None
    if config.schedule == "onecycle":
        if total_steps < 3:  # OneCycleLR needs a distinct step for each of its phase ends
            return None
        warmup_steps = min(max(2, round(config.warmup * total_steps)), total_steps - 1)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=warmup_steps / total_steps)
    warmup_steps = max(1, round(config.warmup * total_steps))

    def linear(step: int) -> float:  # ramp up to the peak, then straight down to zero
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and Python generator states, as tensors and plain values (weights_only loads them)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def restore_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class TrainState:
    config: TrainConfig
    class_names: tuple[str, ...]
    model: nn.Module                             # the bare module: checkpoints keep its plain names
    optimizer: torch.optim.Optimizer
    schedule: Any                                # an LRScheduler, or None for a constant rate
    ema: EMA | None                              # averaged weights, updated after each step
    n_train: int                                 # training images; an epoch is n_train // batch_size steps
    data_order: torch.Generator                  # CPU generator: the same batch order on any device
    epoch_start_order: torch.Tensor              # data_order's state when this epoch's permutation was drawn
    step_loss: torch.Tensor                      # (steps_per_epoch,) float32 on the device: this epoch's
    step_correct: torch.Tensor                   # (steps_per_epoch,) int64: correct images per step
    epoch: int = 0                               # epochs finished
    step_in_epoch: int = 0                       # optimizer steps done in the current epoch
    epoch_seconds: float = 0.0                   # wall seconds of the current epoch before a resume
    history: list[EpochRecord] = field(default_factory=list)

    @classmethod
    def create(cls, config: TrainConfig, class_names: tuple[str, ...], in_channels: int, n_train: int,
               device: torch.device) -> "TrainState":
        """A fresh state: the model initialised from torch's global generator (seed it first)."""
        model = create_model(config.model, num_classes=len(class_names), in_channels=in_channels,
                             depth=config.depth, width=config.width).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls.for_model(config, class_names, model, make_optimizer(config, model), n_train)

    @classmethod
    def for_model(cls, config: TrainConfig, class_names: tuple[str, ...], model: nn.Module,
                  optimizer: torch.optim.Optimizer, n_train: int) -> "TrainState":
        """A fresh state around a built model and optimizer (what `create` and the bench use)."""
        device = next(model.parameters()).device
        steps_per_epoch = n_train // config.batch_size
        data_order = torch.Generator().manual_seed(config.seed)
        return cls(config, tuple(class_names), model, optimizer,
                   make_schedule(config, optimizer, steps_per_epoch * config.epochs),
                   EMA(model, config.ema) if config.ema else None, n_train,
                   data_order, data_order.get_state(),
                   torch.zeros(steps_per_epoch, device=device),
                   torch.zeros(steps_per_epoch, device=device, dtype=torch.long))

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.config.batch_size

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far in the whole run."""
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    @property
    def eval_model(self) -> nn.Module:
        """What validation sees and evaluation loads: the EMA weights when there are some."""
        return self.ema.model if self.ema is not None else self.model

    def epoch_order(self) -> torch.Tensor:
        """This epoch's permutation (N,) of the training set; drawn again from its saved start
        after a mid-epoch resume, so the remaining batches are the ones an unbroken run takes."""
        if self.step_in_epoch == 0:
            self.epoch_start_order = self.data_order.get_state()
        else:
            self.data_order.set_state(self.epoch_start_order)
        return torch.randperm(self.n_train, generator=self.data_order)

    def record_step(self, loss: torch.Tensor, correct: torch.Tensor) -> None:
        """Book one optimizer step: schedule, metrics (as tensors: no host sync), counters, EMA."""
        if self.schedule is not None:
            self.schedule.step()
        self.step_loss[self.step_in_epoch] = loss
        self.step_correct[self.step_in_epoch] = correct
        self.step_in_epoch += 1
        if self.ema is not None:
            self.ema.update(self.model, self.global_step)

    def finish_epoch(self, record: EpochRecord) -> None:
        self.history.append(record)
        self.advance_epoch()

    def advance_epoch(self) -> None:
        self.epoch, self.step_in_epoch, self.epoch_seconds = self.epoch + 1, 0, 0.0

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (format version 1): config and weights for every command, the rest for resume."""
        return {
            "config": cfg.to_dict(self.config), "class_names": list(self.class_names),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": {**global_rng_state(), "data_order_epoch_start": self.epoch_start_order,
                    "data_order": self.data_order.get_state()},
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "epoch_seconds": self.epoch_seconds,
            "step_loss": self.step_loss.cpu(), "step_correct": self.step_correct.cpu(),
            "history": [asdict(r) for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any], source: Path | str) -> None:
        """Continue from a checkpoint `state_dict()` wrote (`source` names it in errors).
        Also restores the process-wide random generators, which the training steps draw from."""
        load_model_state(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None:
            load_model_state(self.ema.model, state["ema"], source)
        restore_global_rng_state(state["rng"])
        self.data_order.set_state(state["rng"]["data_order"])
        self.epoch_start_order = state["rng"]["data_order_epoch_start"]
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.epoch_seconds = state["epoch_seconds"]
        self.step_loss.copy_(state["step_loss"])
        self.step_correct.copy_(state["step_correct"])


def resumable_checkpoint(state: dict[str, Any], path: Path) -> TrainConfig:
    """The config of a checkpoint that can be resumed; a one-line CheckpointError otherwise."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} holds weights but not the training state to resume "
                              f"(no {', '.join(missing)})")
    try:
        return cfg.from_dict(dict(state["config"]))
    except UsageError as e:
        raise CheckpointError(f"{path} holds a config this mnist-cnn cannot use: {e}") from None
