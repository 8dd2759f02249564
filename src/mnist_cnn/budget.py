"""`--budget MINUTES`: the run's length chosen to fit a wall-clock budget on this machine.

Before the first step, `plan_budget` weighs what the costs measured here say (an optimizer step
after warm-up, a validation pass, a checkpoint) and picks the largest number of optimizer steps
whose run, with a validation and a checkpoint after every epoch (the last one may be partial) and
the closing report, ends inside TARGET_FRACTION of the budget. When the run may compile
(--compile on, or auto for a network where compiling can pay), compiled steps are timed too, on a
copy of the model: that pays the compile time now (torch.compile's cache then serves the run's own
compile), and the plan counts the step the run will really take; `auto` compiles only when that
step is faster here (compilation.resolve_compile).

The plan is a run length, not a deadline: train() writes the resolved `steps` (and the epochs
they span) into config.json and the checkpoint with `budget` set back to 0, so `--config
RUN/config.json` and `--resume` repeat the same steps instead of measuring again. What was
measured goes into environment.json under "budget".
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import io
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import torch

from mnist_cnn import compilation, precision
from mnist_cnn.config import TrainConfig
from mnist_cnn.errors import UsageError
from mnist_cnn.inference import loss_and_accuracy

# The plan aims at this fraction of the budget: step times drift on a shared CPU, and the per-epoch
# logs and the closing report's plots are estimated (below), not measured.
TARGET_FRACTION = 0.95
# Seconds set aside for the closing report's plots and files, beyond its predictions.
REPORT_S = 2.0
# Seconds an epoch end costs beyond validation and checkpoint (TensorBoard scalars and weight
# histograms, metrics.csv, the printed lines): tens of ms, which only short epochs notice.
EPOCH_LOG_S = 0.03
# The closing report predicts this many validation images (train._train_run).
REPORT_IMAGES = 2000
# How long the plan times steps: this fraction of the budget, at most MEASURE_MAX_S. A shared CPU
# has slow spells of seconds, so a 2-second window missed the sustained step by up to 80% on a
# 2-core VM, a 20-second one by under 10% (docs/training.md).
MEASURE_FRACTION = 0.02
MEASURE_MAX_S = 20.0


def measuring_seconds(minutes: float) -> float:
    """Seconds of training steps a budget of `minutes` times before it plans."""
    return min(MEASURE_MAX_S, MEASURE_FRACTION * 60 * minutes)


class BudgetTooShort(UsageError):
    """Not even one epoch fits the budget here."""

    def __init__(self, minutes: float, costs: str, need_minutes: float, members: int = 1) -> None:
        self.minutes, self.costs, self.need_minutes = minutes, costs, need_minutes  # minutes: one network's
        share = f" ({minutes:g} min for each of {members} members)" if members > 1 else ""
        super().__init__(f"--budget {minutes * members:g} min{share} is too short for one epoch here ({costs}): "
                         f"give at least {math.ceil(need_minutes * members * 10) / 10:g} min, or fewer images "
                         "(--train-subset)")

    def for_members(self, members: int) -> "BudgetTooShort":
        """The same refusal, said of an ensemble of `members` whose budget was split between them."""
        return BudgetTooShort(self.minutes, self.costs, self.need_minutes, members)


class Measured(NamedTuple):
    """What was measured here before the run's first step, in seconds."""

    step_s: float          # one eager training step, after warm-up, augmentation included
    validation_s: float    # one validation pass
    checkpoint_s: float    # one checkpoint
    spent_s: float         # already gone: loading the data and measuring


class CompiledStep(NamedTuple):
    """A compiled training step timed here (on a copy of the model), in seconds."""

    step_s: float          # one compiled step, after warm-up
    spent_s: float         # the timing, compiling included


@dataclass(frozen=True)
class Costs:
    """What a run of a given length costs here, in seconds."""

    step_s: float          # one optimizer step (after warm-up; compiled, when the run compiles)
    epoch_end_s: float     # one validation pass and the epoch's logs, after every epoch
    checkpoint_s: float    # one checkpoint, after every epoch and every checkpoint_every steps
    fixed_s: float         # once: time already spent (measuring, compiling), the closing report

    def seconds(self, steps: int, steps_per_epoch: int, checkpoint_every: int) -> float:
        """Wall seconds of a whole run of `steps` optimizer steps."""
        epochs = math.ceil(steps / steps_per_epoch)
        periodic = steps // checkpoint_every if checkpoint_every else 0
        return (self.fixed_s + steps * self.step_s + epochs * (self.epoch_end_s + self.checkpoint_s)
                + periodic * self.checkpoint_s)


def steps_within(seconds: float, costs: Costs, steps_per_epoch: int, checkpoint_every: int) -> int:
    """The most optimizer steps whose whole run takes at most `seconds` (0 when none fits)."""
    low, high = 0, int(max(0.0, seconds - costs.fixed_s) / max(costs.step_s, 1e-9)) + 1
    while low < high:  # the cost grows with the steps: bisect for the last length that fits
        middle = (low + high + 1) // 2
        if costs.seconds(middle, steps_per_epoch, checkpoint_every) <= seconds:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(frozen=True)
class BudgetPlan:
    """The run length chosen for a budget, and why."""

    minutes: float
    steps: int
    steps_per_epoch: int
    compile: str                 # "on" or "off", resolved with the budget's steps
    eager_step_s: float          # measured
    compiled_step_s: float | None  # measured, when the run could compile
    costs: Costs                 # what the plan counted (step_s compiled when compile is "on")
    expected_s: float            # the planned run's wall time, the time already spent included

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / self.steps_per_epoch)

    def summary(self) -> str:
        """One line: what was chosen and why."""
        step = f"{1000 * self.eager_step_s:.3g} ms/step measured"
        if self.compiled_step_s is not None:
            verdict = "compiling" if self.compile == "on" else "not faster here: eager"
            step += f", {1000 * self.compiled_step_s:.3g} ms compiled ({verdict})"
        return (f"budget {self.minutes:g} min: {step}, validation and logs {self.costs.epoch_end_s:.2g} s, "
                f"checkpoint {self.costs.checkpoint_s:.2g} s -> {self.steps:,d} steps "
                f"({self.steps / self.steps_per_epoch:.1f} epochs of {self.steps_per_epoch:,d}) "
                f"ending at ~{self.expected_s / 60:.3g} min")

    def record(self) -> dict[str, Any]:
        """What environment.json keeps of the plan (the measurements are this machine's)."""
        return {"minutes": self.minutes, "steps": self.steps, "compile": self.compile,
                "eager_step_seconds": self.eager_step_s, "compiled_step_seconds": self.compiled_step_s,
                **asdict(self.costs),
                "expected_seconds": self.expected_s}


def plan_budget(config: TrainConfig, steps_per_epoch: int, n_validation: int, device: torch.device,
                measured: Measured, time_compiled: Callable[[], CompiledStep]) -> BudgetPlan:
    """The run length that fits `config.budget` minutes, given what was `measured` (its validation
    pass over `n_validation` images); the compile choice is resolved here too, for the steps the
    budget allows, calling `time_compiled()` (which compiles) only when the run may compile.
    A UsageError when not even one epoch fits."""
    eager_s, validation_s, checkpoint_s, spent_s = measured
    target_s = 60 * config.budget * TARGET_FRACTION
    report_s = REPORT_S + validation_s * min(1.0, REPORT_IMAGES / max(1, n_validation))
    costs = Costs(eager_s, validation_s + EPOCH_LOG_S, checkpoint_s, spent_s + report_s)
    steps = steps_within(target_s, costs, steps_per_epoch, config.checkpoint_every)
    compiled = functools.cache(time_compiled)
    choice = compilation.resolve_compile(config.compile, config.preset, config.model, steps, device,
                                         lambda: eager_s, lambda: compiled().step_s)
    # Timed when resolve_compile weighed it, and for --compile on, which it does not weigh.
    timed = compiled() if choice == "on" or compiled.cache_info().currsize else None
    if timed is not None:  # compiling and timing took time, whatever was chosen
        costs = dataclasses.replace(costs, step_s=timed.step_s if choice == "on" else eager_s,
                                    fixed_s=costs.fixed_s + timed.spent_s)
        steps = steps_within(target_s, costs, steps_per_epoch, config.checkpoint_every)
    if steps < steps_per_epoch:
        need_s = costs.seconds(steps_per_epoch, steps_per_epoch, config.checkpoint_every) / TARGET_FRACTION
        raise BudgetTooShort(config.budget, f"{steps_per_epoch:,d} steps at {1000 * costs.step_s:.3g} ms, "
                                            f"validation {validation_s:.2g} s", need_s / 60)
    return BudgetPlan(config.budget, steps, steps_per_epoch, choice, eager_s, timed.step_s if timed else None, costs,
                      costs.seconds(steps, steps_per_epoch, config.checkpoint_every))


def validation_seconds(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       config: TrainConfig, device: torch.device) -> float:
    """Seconds of one validation pass, on a copy of `model` (its first pass also warms it up,
    so this errs long)."""
    model = copy.deepcopy(model)
    started = time.perf_counter()
    with precision.autocast(device, config.amp == "bf16"):
        loss_and_accuracy(model, images, labels, channels_last=config.channels_last)
    return time.perf_counter() - started


def checkpoint_seconds(state_dict: Callable[[], dict[str, Any]]) -> float:
    """Seconds of one checkpoint, estimated as twice its serialisation in memory: the file write
    and fsync of a few MB cost about as much again."""
    started = time.perf_counter()
    torch.save(state_dict(), io.BytesIO())
    return 2 * (time.perf_counter() - started)
