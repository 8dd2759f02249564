"""`TrainState`: everything a training run changes as it goes, and the one thing a checkpoint holds.

Model, optimizer, schedule, EMA weights, every random-number stream (torch, CUDA, numpy, Python,
and the data-order generator), the counters and the epoch's per-step metrics. `state_dict()` is
what a checkpoint saves; `load_state_dict()` is what resume restores, so a resumed run continues
bit for bit. `CHECKPOINT_SCHEMA`, below `TrainState`, declares that dict once: every key
`state_dict()` writes, what its value must be, and who needs it; checkpoint.py checks every
loaded file against it (format version 1).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mnist_cnn import config as cfg
from mnist_cnn.config import TrainConfig
from mnist_cnn.ema import EMA
from mnist_cnn.errors import CheckpointError, UsageError
from mnist_cnn.models import create_model, load_model_state
from mnist_cnn.runs import EpochRecord


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


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The run's optimizer steps: `steps` when set, else whole epochs."""
    return config.steps or steps_per_epoch * config.epochs


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
                   make_schedule(config, optimizer, total_steps(config, steps_per_epoch)),
                   EMA(model, config.ema) if config.ema else None, n_train,
                   data_order, data_order.get_state(),
                   torch.zeros(steps_per_epoch, device=device),
                   torch.zeros(steps_per_epoch, device=device, dtype=torch.long))

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.config.batch_size

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: the schedule's length."""
        return total_steps(self.config, self.steps_per_epoch)

    @property
    def epochs_total(self) -> int:
        """Epochs the run spans; the last one is partial when `total_steps` says so."""
        return -(-self.total_steps // self.steps_per_epoch)

    @property
    def steps_this_epoch(self) -> int:
        """Optimizer steps of the current epoch: all of them but in a partial last epoch."""
        return min(self.steps_per_epoch, self.total_steps - self.epoch * self.steps_per_epoch)

    def set_length(self, config: TrainConfig) -> None:
        """Take `config`, whose run length was resolved before the first step (a budget): the
        schedule is rebuilt for its steps, as a run started with that config builds it."""
        assert self.global_step == 0, "the run's length is fixed once it has taken a step"
        self.config = config
        self.schedule = make_schedule(config, self.optimizer, self.total_steps)

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far in the whole run (only the last epoch can be partial)."""
        return min(self.epoch * self.steps_per_epoch, self.total_steps) + self.step_in_epoch

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


# ---------------------------------------------------------------- the checkpoint, declared once

@dataclass(frozen=True)
class CheckpointField:
    """One key of `TrainState.state_dict()`: what its value must be (as an error says it), the
    test a loaded value must pass, and who needs it: "reader" = every command that loads a model,
    "resume" = `train --resume` only, None = optional (checked when present)."""

    expected: str
    check: Callable[[Any], bool]
    needed_by: str | None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _counter(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _str_keyed_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _tensor_dict(value: Any) -> bool:
    return _str_keyed_dict(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _config_ok(config: Any) -> bool:
    """The settings that evaluate, predict, show, export and ensemble read without the typed
    TrainConfig (resume parses the whole config with config.from_dict)."""
    return (_str_keyed_dict(config) and isinstance(config.get("model", ""), str)
            and isinstance(config.get("dataset", ""), str) and isinstance(config.get("data_dir", ""), (str, type(None)))
            and _is_int(config.get("validation_size", 0)) and isinstance(config.get("channels_last", True), bool)
            and _is_number(config.get("epochs", 0)))


def _history_ok(history: Any) -> bool:
    names = {f.name for f in fields(EpochRecord)}
    return isinstance(history, list) and all(
        isinstance(r, dict) and set(r) == names and _is_int(r["epoch"]) and all(_is_number(v) for v in r.values())
        for r in history)


def _rng_ok(rng: Any) -> bool:
    """What `global_rng_state()` and the data-order generator produce: generator states of torch's
    own size, numpy's MT19937 (624 words) and Python's (625 words), as restore_global_rng_state reads them."""
    if not isinstance(rng, dict):
        return False
    generator_bytes = torch.get_rng_state().numel()

    def generator(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == (generator_bytes,)

    n, py = rng.get("numpy"), rng.get("python")
    return (generator(rng.get("torch")) and generator(rng.get("data_order")) and generator(rng.get("data_order_epoch_start"))
            and isinstance(rng.get("cuda"), (list, tuple)) and all(isinstance(t, torch.Tensor) for t in rng["cuda"])
            and isinstance(n, dict) and isinstance(n.get("key"), torch.Tensor) and n["key"].shape == (624,)
            and _is_int(n.get("pos")) and 0 <= n["pos"] <= 624 and _is_int(n.get("has_gauss"))
            and _is_number(n.get("cached_gaussian"))
            and isinstance(py, (list, tuple)) and len(py) == 3 and _is_int(py[0])
            and isinstance(py[1], (list, tuple)) and len(py[1]) == 625 and all(_is_int(w) and 0 <= w < 2**32 for w in py[1])
            and (py[2] is None or _is_number(py[2])))


def _step_tensor(floating: bool) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return (isinstance(v, torch.Tensor) and v.ndim == 1 and v.is_floating_point() == floating
                and v.dtype != torch.bool)
    return check


# Every key `TrainState.state_dict()` writes, in its order (save_checkpoint adds "format" and "version").
CHECKPOINT_SCHEMA: dict[str, CheckpointField] = {
    "config": CheckpointField("a dict of settings: model and dataset strings, validation_size an int, "
                              "channels_last a bool", _config_ok, "reader"),
    "class_names": CheckpointField("a non-empty list of strings", lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                                   and all(isinstance(c, str) for c in v), "reader"),
    "model": CheckpointField("a dict of tensors", _tensor_dict, "reader"),
    "optimizer": CheckpointField("a dict with 'state' and 'param_groups'", lambda v: isinstance(v, dict)
                                 and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)
                                 and all(isinstance(g, dict) for g in v["param_groups"]), "resume"),
    "schedule": CheckpointField("a dict or None", lambda v: v is None or _str_keyed_dict(v), "resume"),
    "ema": CheckpointField("a dict of tensors or None", lambda v: v is None or _tensor_dict(v), None),
    "rng": CheckpointField("a dict of RNG states", _rng_ok, "resume"),
    "epoch": CheckpointField("a non-negative int", _counter, "resume"),
    "step_in_epoch": CheckpointField("a non-negative int", _counter, "resume"),
    "global_step": CheckpointField("a non-negative int", _counter, "resume"),
    "epoch_seconds": CheckpointField("a number", _is_number, "resume"),
    "step_loss": CheckpointField("a 1-D floating-point tensor", _step_tensor(floating=True), "resume"),
    "step_correct": CheckpointField("a 1-D integer tensor", _step_tensor(floating=False), "resume"),
    "history": CheckpointField("a list of per-epoch records (dicts of epoch, seconds, lr, losses and accuracies)",
                               _history_ok, "resume"),
}
READER_KEYS = tuple(k for k, f in CHECKPOINT_SCHEMA.items() if f.needed_by == "reader")
# What a checkpoint needs beyond config and weights to continue a run (evaluate needs only those).
RESUME_KEYS = tuple(k for k, f in CHECKPOINT_SCHEMA.items() if f.needed_by == "resume")


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
