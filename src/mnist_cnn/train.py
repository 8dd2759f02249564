"""The training loop: `train` sets a run up, `fit` runs epochs of `train_epoch` and `validate`,
`run_steps` is the hot loop and `train_step` one optimizer step.

Data stay in memory as uint8 tensors on the training device and batches are gathered by
index, so no Python runs per sample. Per-step metrics accumulate in tensors and are read once
per epoch (a device-to-host copy is a sync point on a GPU). Everything the run changes lives
in one `TrainState` (trainstate.py); a checkpoint is its `state_dict()` after every epoch (and
every `checkpoint_every` steps), so `resume` continues bit-exactly. What differs under torchrun
sits behind `loop.strategy` (distributed.py); what is written to the run directory behind
`loop.run` and `loop.logger` (runlog.py).
"""
from __future__ import annotations

import copy
import dataclasses
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn import config as cfg
from mnist_cnn import budget, compilation, distributed, precision
from mnist_cnn.augment import augment
from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.config import TrainConfig
from mnist_cnn import data as datasets  # datasets.load_dataset, looked up per call: tests swap it
from mnist_cnn.data.load import check_request
from mnist_cnn.distributed import SingleProcess, Strategy
from mnist_cnn.errors import CheckpointError, MnistCnnError, UsageError
from mnist_cnn.fileio import read_json, write_json
from mnist_cnn.inference import load_classifier, predict_logits, select_device, to_input
from mnist_cnn.runlog import NullBar, NullLogger, RunLogger, TrainingRun, closing_report, training_run
from mnist_cnn.evaluate import evaluate
from mnist_cnn.models import Ensemble
from mnist_cnn.runs import (CHECKPOINT, ENSEMBLE_REPORT, MEMBERS, EpochRecord, create_run_dir, default_run_name,
                            ensemble_config, environment_info, is_ensemble_run, member_dir, read_metrics_csv,
                            read_run_info, resolve_run)
from mnist_cnn.trainstate import TrainState, resumable_checkpoint, seed_everything


# Training steps a --budget times at least, after a warm-up, however short its measuring time
# (budget.measuring_seconds) and however slow the step.
MEASURED_STEPS = 20


class TrainingInterrupted(MnistCnnError):
    """SIGINT/SIGTERM arrived; the state was saved and the run can be resumed."""

    exit_code = 130
    run_status = "interrupted"  # what run.json says (runs.training_run)

    def __init__(self, position: str, run_dir: Path | str) -> None:
        super().__init__(f"training stopped {position}; state saved. Resume with: mnist-cnn train --resume {run_dir}")
        self.position = position  # e.g. "by SIGINT at epoch 2, step 40/430"


class TrainingDiverged(MnistCnnError):
    """The training loss or the weights stopped being finite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    history: list[EpochRecord]
    model: nn.Module
    config: TrainConfig
    stopped_early: bool = False  # `on_epoch_end` asked to stop before the config's last epoch
    global_step: int = 0         # optimizer steps taken (an ensemble: all its members')
    members: list["TrainResult"] = field(default_factory=list)  # an ensemble's member runs, in order


@dataclass
class TrainData:
    """The splits training reads: train on the device, validation where evaluation moves it."""

    train_x: torch.Tensor          # (N, C, 28, 28) uint8
    train_y: torch.Tensor          # (N,) int64
    validation_x: torch.Tensor
    validation_y: torch.Tensor
    class_names: tuple[str, ...]
    n_test: int
    source: str


@dataclass
class StopRequest:
    """Set by a SIGINT/SIGTERM handler (stop_on_signals); the loop checks it after each step."""

    signal_name: str | None = None   # e.g. "SIGINT"; None while no stop was asked for


@dataclass
class Loop:
    """What the loop talks to besides its state."""

    data: TrainData
    step_model: nn.Module                     # the model, or its DDP / torch.compile wrapper
    strategy: Strategy = field(default_factory=lambda: SingleProcess(torch.device("cpu")))
    run: TrainingRun | None = None            # None: nothing is saved (the bench)
    logger: RunLogger | NullLogger = field(default_factory=NullLogger)
    stop: StopRequest = field(default_factory=lambda: StopRequest())  # set by stop_on_signals
    stop_after_steps: int | None = None       # simulate an interruption after this global step (tests)


@dataclass
class StepLog:
    """Steps of the current epoch not yet handed to the logger."""

    first: int
    walltimes: list[float] = field(default_factory=list)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, label_smoothing: float = 0.0,
               amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step. Returns (mean loss, number correct) as 0-d tensors: no host sync.

    amp: forward and loss under bfloat16 autocast on the images' device; the backward pass and the
    update stay float32 (bf16 has float32's exponent range, so it needs no gradient scaler)."""
    with precision.autocast(images.device, amp):
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == labels).sum()


def train(config: TrainConfig | None = None, *, out_dir: str | Path = "runs", name: str | None = None,
          force: bool = False, resume: str | Path | None = None, dataset: Any = None,
          print_fn: Callable[[str], None] = print, progress: bool | None = None,
          stop_after_steps: int | None = None,
          on_epoch_end: Callable[[EpochRecord], bool | None] | None = None) -> TrainResult:
    """Train a model into a run directory (or continue one with `resume`); with `config.members`
    K > 1, an ensemble of K member runs in one directory (`train_ensemble`).

    `dataset` may be a preloaded `mnist_cnn.data.Dataset` (tests, notebooks); otherwise the
    config's data set is loaded. `stop_after_steps` simulates an interruption (tests).
    `on_epoch_end(record)` runs on the main process after each epoch's validation, logs and
    checkpoint; returning True stops training there (run.json status "stopped").
    """
    options = dict(dataset=dataset, print_fn=print_fn, progress=progress, stop_after_steps=stop_after_steps,
                   on_epoch_end=on_epoch_end)
    ensemble_dir = _ensemble_to_resume(resume)
    if ensemble_dir is not None or (resume is None and config is not None and config.members > 1):
        return train_ensemble(config, ensemble_dir, out_dir=out_dir, name=name, force=force, **options)
    return _train_one(config, out_dir=out_dir, name=name, force=force, resume=resume, **options)


def _train_one(config: TrainConfig | None, *, out_dir: str | Path, name: str | None, force: bool,
               resume: str | Path | None, dataset: Any, print_fn: Callable[[str], None], progress: bool | None,
               stop_after_steps: int | None,
               on_epoch_end: Callable[[EpochRecord], bool | None] | None) -> TrainResult:
    """`train` for one network."""
    started = time.monotonic()  # a --budget counts from here
    resume_dir, saved = (None, None) if resume is None else _resume_point(resume)
    config = resumable_checkpoint(saved, resume_dir / CHECKPOINT) if saved else config or cfg.make_config()
    # Under torchrun this process is one rank of several: it joins the group, and only rank 0
    # writes the run directory and prints.
    device = select_device(config.device)
    # The precision policy resolved once ("auto" -> "off"/"bf16"): config.json and the checkpoint keep it.
    config = dataclasses.replace(config, amp=precision.resolve_amp(config.amp, config.preset, device, bool(saved)))
    strategy = distributed.make_strategy(device)
    try:
        print_fn = print_fn if strategy.is_main else _print_nothing
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        check_before_loading(config, dataset, strategy)
        run_dir = resume_dir or strategy.run_once(lambda: _new_run_dir(config, out_dir, name, force))
        # From here a failure is recorded in run.json; one before the first checkpoint leaves the name free.
        with training_run(run_dir, strategy.is_main, saved and saved["global_step"], strategy.barrier) as run:
            data = prepare_data(config, dataset, strategy.device)
            state = TrainState.create(config, data.class_names, data.train_x.shape[1], len(data.train_y),
                                      strategy.device)
            if saved:
                state.load_state_dict(saved, run_dir / CHECKPOINT)
            budget_record = _kept_budget_record(run_dir) if saved else _resolve_length(state, data, strategy,
                                                                                        print_fn, started)
            state.config = _resolved_compile(state, data, strategy, print_fn, resumed=bool(saved))
            if not saved:
                run.write_json("config.json", cfg.to_dict(state.config))  # with length, amp and compile resolved
            run.write_json("environment.json", {**environment_info(strategy.device, config.seed),
                                                "data_source": data.source, "world_size": strategy.info.world_size,
                                                **precision.precision_info(state.config.amp, strategy.device),
                                                "compile": state.config.compile, **budget_record})
            result = _train_run(state, data, run, strategy, print_fn, progress, stop_after_steps, on_epoch_end)
            run.set_status("stopped" if result.stopped_early else "complete")
        strategy.barrier()  # leave the group together (rank 0 was still plotting)
        return result
    finally:
        strategy.close()


def _train_run(state: TrainState, data: TrainData, run: TrainingRun, strategy: Strategy,
               print_fn: Callable[[str], None], progress: bool | None, stop_after_steps: int | None,
               on_epoch_end: Callable[[EpochRecord], bool | None] | None) -> TrainResult:
    """`fit` with its logger, signal handlers and closing report around it."""
    logger = _open_logger(state, data, run, print_fn, progress)
    state.model.train()
    step_model = strategy.wrap(state.model)  # DDP under torchrun, else the model
    if state.config.compile == "on":  # compiles on the first step (tens of seconds); checkpoints keep `model`'s plain names
        step_model = torch.compile(step_model)
    with stop_on_signals() as stop:
        loop = Loop(data, step_model, strategy, run, logger, stop, stop_after_steps)
        try:
            stopped_early = fit(state, loop, on_epoch_end)
            logger.hparams(cfg.to_dict(state.config), state.history)
        finally:
            logger.close()
    if run.writes:
        val_x, val_y = data.validation_x[:2000], data.validation_y[:2000]
        with precision.autocast(strategy.device, state.config.amp == "bf16"):
            predicted = predict_logits(state.eval_model, val_x.to(strategy.device),
                                       channels_last=state.config.channels_last).argmax(1).cpu()
        closing_report(run.dir, state.history, (val_x, val_y, predicted), data.class_names, print_fn)
    return TrainResult(run.dir, state.history, state.eval_model, state.config, stopped_early, state.global_step)


def fit(state: TrainState, loop: Loop, on_epoch_end: Callable[[EpochRecord], bool | None] | None = None) -> bool:
    """Train until the run's last step. Returns True when `on_epoch_end` stopped it earlier."""
    while state.epoch < state.epochs_total:
        started = train_epoch(state, loop)
        record = end_epoch(state, loop, started)
        more = state.epoch < state.epochs_total
        if loop.strategy.agreed_stop(loop.stop.signal_name) and more:
            raise TrainingInterrupted(_interrupt_position(loop, state), loop.run.dir if loop.run else '')
        if on_epoch_end is not None:
            wants_stop = loop.strategy.is_main and bool(on_epoch_end(record))
            if loop.strategy.main_decides(wants_stop) and more:
                return True
    return False


def train_epoch(state: TrainState, loop: Loop) -> float:
    """One pass over the training set (its rest after a mid-epoch resume; the run's last epoch
    stops at its last step, which may come earlier). Returns the wall
    time the epoch counts from; raises TrainingInterrupted, state saved, on a stop signal."""
    started = time.time() - state.epoch_seconds
    order = state.epoch_order().to(loop.data.train_y.device)
    log = StepLog(state.step_in_epoch)
    bar = loop.logger.epoch_bar(state.epoch + 1, state.steps_this_epoch, state.step_in_epoch)
    finished = run_steps(state, loop, order, log, started, bar)
    bar.close()
    if not finished:  # stopped mid-epoch, state saved in run_steps
        raise TrainingInterrupted(_interrupt_position(loop, state), loop.run.dir if loop.run else '')
    log_steps(state, loop, log)
    return started


def run_steps(state: TrainState, loop: Loop, order: torch.Tensor, log: StepLog, started: float,
              bar: Any = NullBar()) -> bool:
    """The hot loop: the epoch's remaining steps over the permutation `order` (N,) of training
    indices, with a checkpoint where the config asks for one. Returns False when it stopped
    before the epoch's end (a stop signal, or `loop.stop_after_steps`), after saving the state."""
    config, data, batch = state.config, loop.data, state.config.batch_size
    amp, last = config.amp == "bf16", state.steps_this_epoch
    while state.step_in_epoch < last:
        first = state.step_in_epoch * batch
        idx = loop.strategy.shard(order[first:first + batch])
        images = augment(to_input(data.train_x[idx], config.channels_last), config.augment)  # (B, C, 28, 28) float
        loss, correct = train_step(loop.step_model, state.optimizer, images, data.train_y[idx],
                                   config.label_smoothing, amp=amp)
        state.record_step(loss, correct)
        log.walltimes.append(time.time())
        bar.update()
        step = state.global_step
        stop = loop.strategy.agreed_stop(loop.stop.signal_name, step) or (
            loop.stop_after_steps is not None and step >= loop.stop_after_steps)
        periodic = config.checkpoint_every and step % config.checkpoint_every == 0
        if (stop or periodic) and state.step_in_epoch < last:
            log_steps(state, loop, log)
            state.epoch_seconds = time.time() - started
            checkpoint(state, loop)
        if stop:
            break
    return state.step_in_epoch == last


def log_steps(state: TrainState, loop: Loop, log: StepLog) -> None:
    """Hand the steps since the last call to the logger (combined across processes first).

    The non-finite check sits here because the losses are read here anyway (the logger copies
    them to the host): it adds no sync to the hot loop. A NaN is therefore noticed at the next
    log point, an epoch end or a periodic checkpoint, always before that checkpoint is written.
    """
    first, stop = log.first, state.step_in_epoch
    losses, correct = state.step_loss[first:stop], state.step_correct[first:stop]
    loop.strategy.reduce_steps(losses, correct)
    loop.logger.train_steps(state.epoch * state.steps_per_epoch + first + 1, losses,
                            correct / state.config.batch_size, log.walltimes)
    loop.logger.flush()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        _diverged(state, loop, f"the training loss is {float(losses[bad[0, 0]])}", first + int(bad[0, 0]) + 1)
    log.first, log.walltimes = stop, []


def validate(state: TrainState, loop: Loop) -> tuple[float, float]:
    """(mean loss, accuracy) of the weights being evaluated on the validation split, at the
    run's precision (what evaluate does with the saved run, where the device has native bf16)."""
    with precision.autocast(loop.strategy.device, state.config.amp == "bf16"):
        return loop.strategy.loss_and_accuracy(state.eval_model, loop.data.validation_x, loop.data.validation_y,
                                               state.config.channels_last)


def end_epoch(state: TrainState, loop: Loop, started: float) -> EpochRecord:
    """Validate, book the epoch in the history and the logs, checkpoint."""
    validation_loss, validation_accuracy = validate(state, loop)
    done = slice(0, state.step_in_epoch)  # a partial last epoch leaves the rest of the step tensors unused
    record = EpochRecord(
        epoch=state.epoch + 1, seconds=time.time() - started, lr=state.optimizer.param_groups[0]["lr"],
        train_loss=state.step_loss[done].double().mean().item(),
        train_accuracy=(state.step_correct[done].double() / state.config.batch_size).mean().item(),
        validation_loss=validation_loss, validation_accuracy=validation_accuracy)
    state.finish_epoch(record)
    loop.logger.epoch_end(record, state.global_step, state.history)
    loop.logger.histograms(state.model, state.global_step)
    checkpoint(state, loop)
    return record


def checkpoint(state: TrainState, loop: Loop) -> None:
    """Save the state (the main process writes), never over a good checkpoint with weights
    that went NaN or infinite: the one host sync this check costs comes once per checkpoint."""
    weights = [t for t in state.model.state_dict().values() if t.is_floating_point()]
    if not bool(torch.stack([t.isfinite().all() for t in weights]).all()):
        _diverged(state, loop, "the weights are not finite", state.step_in_epoch or state.steps_per_epoch)
    if loop.run is not None:
        loop.run.save_checkpoint(state.state_dict)


def _diverged(state: TrainState, loop: Loop, what: str, step: int) -> None:
    epoch = state.epoch + (1 if state.step_in_epoch else 0)
    kept = (f"the last good checkpoint is kept in {loop.run.dir}" if loop.run and (loop.run.dir / CHECKPOINT).is_file()
            else "no checkpoint was saved before it")
    raise TrainingDiverged(f"training diverged at epoch {epoch}, step {step}/{state.steps_per_epoch}: {what}; "
                           f"try a lower --lr (this run used {state.config.lr:g}); {kept}")


def check_before_loading(config: TrainConfig, dataset: Any, strategy: Strategy) -> None:
    """The checks that need no data file, made before a run directory exists: a registered data
    set's sizes are known without loading it."""
    strategy.check_batch(config.batch_size)  # an indivisible global batch
    if dataset is None:
        n_file = check_request(config.dataset, config.data_dir, config.validation_size)
        if n_file is not None:
            n_train = n_file - config.validation_size
            _check_batch_fits(config.batch_size, min(config.train_subset or n_train, n_train))


def prepare_data(config: TrainConfig, dataset: Any, device: torch.device) -> TrainData:
    """The config's data (`dataset`, or loaded now) on the training device."""
    if dataset is None:
        dataset = datasets.load_dataset(config.dataset, config.data_dir, config.validation_size)
    train_x, train_y = dataset.train.images, dataset.train.labels
    if config.train_subset:
        train_x, train_y = train_x[:config.train_subset], train_y[:config.train_subset]
    _check_batch_fits(config.batch_size, len(train_y))
    return TrainData(train_x.to(device), train_y.to(device), dataset.validation.images, dataset.validation.labels,
                     tuple(dataset.class_names), len(dataset.test), getattr(dataset, "source", ""))


def _check_batch_fits(batch_size: int, n_train: int) -> None:
    if batch_size > n_train:
        raise UsageError(f"batch_size {batch_size} is larger than the training set ({n_train} images)")


def _resolved_compile(state: TrainState, data: TrainData, strategy: SingleProcess,
                      print_fn: Callable[[str], None], resumed: bool) -> TrainConfig:
    """The config with its compile choice resolved to "on"/"off" (the main process decides for all)."""
    config = state.config
    if resumed:
        choice = compilation.resume_compile(config.compile, strategy.device, print_fn)
    else:
        steps_left = state.total_steps
        choice = compilation.resolve_compile(config.compile, config.preset, config.model, steps_left,
                                             strategy.device, lambda: _step_seconds(state, data, MEASURED_STEPS),
                                             lambda: _step_seconds(state, data, MEASURED_STEPS, compiled=True))
        choice = "on" if strategy.main_decides(choice == "on") else "off"
    return dataclasses.replace(config, compile=choice)


def _step_seconds(state: TrainState, data: TrainData, steps: int = 3, as_the_loop: bool = False,
                  compiled: bool = False, seconds: float = 0.0) -> float:
    """Seconds per training step over at least `steps` steps and at least `seconds`, timed on
    copies of the model, optimizer and EMA after one warm-up step; the run's weights and random
    streams are left untouched. Without `as_the_loop`, the optimizer step alone on the first batch
    (what compiling would speed up); with it, the step as the loop takes it: a random batch
    gathered, converted and augmented, and the EMA update.
    `compiled`: through torch.compile, whose warm-up step compiles; the cache it fills serves the
    run's own compile of the same network."""
    model, optimizer, ema = copy.deepcopy((state.model, state.optimizer, state.ema))
    step_model = torch.compile(model) if compiled else model
    config, batch, n = state.config, state.config.batch_size, len(data.train_y)
    amp, device = config.amp == "bf16", next(model.parameters()).device
    first = torch.arange(batch, device=data.train_y.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout and augment draw from them
        model.train()
        step, started = -1, 0.0  # step -1: the warm-up, not timed
        while step < steps or time.perf_counter() - started < seconds:
            if step == 0:
                started = time.perf_counter()
            idx = torch.randint(n, (batch,), device=data.train_y.device) if as_the_loop else first
            images = to_input(data.train_x[idx], config.channels_last)
            images = augment(images, config.augment) if as_the_loop else images
            loss, _ = train_step(step_model, optimizer, images, data.train_y[idx], amp=amp)
            if as_the_loop and ema is not None:
                ema.update(model, step + 1)
            step += 1
        float(loss)  # waits for the GPU's queued steps
        return (time.perf_counter() - started) / step


def _resolve_length(state: TrainState, data: TrainData, strategy: Strategy, print_fn: Callable[[str], None],
                    started: float) -> dict[str, Any]:
    """A new run's length settled before its first step: a budget turned into `steps` (the main
    process measures, its one line says why) and stored with budget 0, so config.json repeats
    the run without measuring; `epochs` set to those steps' epochs. Returns environment.json's
    record of the budget ({} without one)."""
    config, plan = state.config, None
    if config.budget:
        plan = strategy.run_once(lambda: budget.plan_budget(
            config, state.steps_per_epoch, len(data.validation_y), strategy.device,
            _measure_costs(state, data, strategy.device, started), lambda: _time_compiled(state, data)))
        print_fn(plan.summary())
        config = dataclasses.replace(config, steps=plan.steps, budget=0.0, compile=plan.compile)
    if config.steps:
        config = dataclasses.replace(config, epochs=-(-config.steps // state.steps_per_epoch))
    state.set_length(config)
    return {"budget": plan.record()} if plan else {}


def _kept_budget_record(run_dir: Path) -> dict[str, Any]:
    """A resumed run's record of its budget, from the environment.json it started with ({} when
    there is none): the new environment.json describes this machine but keeps what was planned."""
    try:
        environment = read_json(run_dir / "environment.json")
    except CheckpointError:  # missing or unreadable: the run itself needs nothing from it
        return {}
    kept = environment.get("budget") if isinstance(environment, dict) else None
    return {"budget": kept} if isinstance(kept, dict) else {}


def _measure_costs(state: TrainState, data: TrainData, device: torch.device, started: float) -> budget.Measured:
    """What a budget plans with, measured here, the run's state untouched; `started`: when the
    budget's clock started (time.monotonic())."""
    step_s = _step_seconds(state, data, steps=MEASURED_STEPS, as_the_loop=True,
                           seconds=budget.measuring_seconds(state.config.budget))
    validation_s = budget.validation_seconds(state.eval_model, data.validation_x, data.validation_y, state.config,
                                             device)
    return budget.Measured(step_s, validation_s, budget.checkpoint_seconds(state.state_dict),
                           time.monotonic() - started)


def _time_compiled(state: TrainState, data: TrainData) -> budget.CompiledStep:
    """A compiled step as the loop takes it, timed for a budget's plan, and what timing it cost."""
    started = time.monotonic()
    step_s = _step_seconds(state, data, steps=MEASURED_STEPS, as_the_loop=True, compiled=True,
                           seconds=budget.measuring_seconds(state.config.budget))
    return budget.CompiledStep(step_s, time.monotonic() - started)


# ---------------------------------------------------------------- ensembles

def train_ensemble(config: TrainConfig | None, resume_dir: Path | None, *, out_dir: str | Path, name: str | None,
                   force: bool, dataset: Any, print_fn: Callable[[str], None], progress: bool | None,
                   stop_after_steps: int | None,
                   on_epoch_end: Callable[[EpochRecord], bool | None] | None) -> TrainResult:
    """`config.members` runs, one after another, in RUN/members/1..K (runs.py), used as one model.
    Member k trains `config` with seed x K + k - 1 (cfg.member_seed). A budget gives member 1 budget / K; its resolved
    length (and precision and compile choice) becomes every member's and config.json's, so
    `--config RUN/config.json` repeats the ensemble. A resume (`resume_dir`) continues with the
    member that was running. `stop_after_steps` counts the steps of all members together."""
    if distributed.env_info().world_size > 1:
        raise UsageError("an ensemble trains its members one after another in one process; run it without torchrun")
    if resume_dir is not None:
        config = ensemble_config(resume_dir)
    run_dir = resume_dir or _new_ensemble_dir(config, out_dir, name, force)
    members: list[TrainResult] = []
    with training_run(run_dir, True, 0 if resume_dir else None) as run:
        run.write_json("environment.json", _ensemble_environment(config, run_dir, resumed=resume_dir is not None))
        for k in range(1, config.members + 1):
            done = sum(m.global_step for m in members)
            left = None if stop_after_steps is None else stop_after_steps - done
            try:
                members.append(_train_member(config, run_dir, k, dataset=dataset, print_fn=print_fn,
                                             progress=progress, stop_after_steps=left, on_epoch_end=on_epoch_end))
            except TrainingInterrupted as e:  # resume the ensemble, not the member alone
                raise TrainingInterrupted(f"{e.position} of member {k} of {config.members}", run_dir) from None
            except budget.BudgetTooShort as e:  # said of the budget the user gave, not member 1's share
                raise e.for_members(config.members) from None
            if k == 1:  # the length, precision and compile choice member 1 settled, for all
                config = _settled(config, members[0].config)
                run.write_json("config.json", cfg.to_dict(config))
            if members[-1].stopped_early:
                break
        stopped = members[-1].stopped_early
        if not stopped:
            _ensemble_report(run_dir, dataset, print_fn)
        run.set_status("stopped" if stopped else "complete")
    return TrainResult(run_dir, [r for m in members for r in m.history], Ensemble([m.model for m in members]),
                       config, stopped, sum(m.global_step for m in members), members)


def _ensemble_to_resume(resume: str | Path | None) -> Path | None:
    """The ensemble run `resume` names, or None (nothing to resume, or a single network's run)."""
    if resume is None:
        return None
    run_dir = resolve_run(resume)
    if not is_ensemble_run(run_dir):
        return None
    if read_run_info(run_dir)["status"] == "complete":
        raise UsageError(f"{run_dir} already finished all its members; nothing to resume")
    return run_dir


def _new_ensemble_dir(config: TrainConfig, out_dir: str | Path, name: str | None, force: bool) -> Path:
    path = _new_run_dir(config, out_dir, name, force)
    (path / MEMBERS).mkdir()
    return path


def _ensemble_environment(config: TrainConfig, run_dir: Path, resumed: bool) -> dict[str, Any]:
    """The ensemble's environment.json: this machine, and the budget as given when it started."""
    budget_record = (_kept_budget_record(run_dir) if resumed else
                     {"budget": {"minutes": config.budget, "member_minutes": config.budget / config.members}}
                     if config.budget else {})
    return {**environment_info(select_device(config.device), config.seed), "members": config.members,
            **budget_record}


def _train_member(config: TrainConfig, run_dir: Path, k: int, **options: Any) -> TrainResult:
    """Member k of the ensemble `config` describes: trained, continued, or (finished) read back."""
    member = member_dir(run_dir, k)
    print_fn = options["print_fn"]
    if (member / CHECKPOINT).is_file():
        if read_run_info(member)["status"] == "complete":
            return _finished_member(member, config.device)
        print_fn(f"Ensemble {run_dir}: continuing member {k} of {config.members}")
        return _train_one(None, out_dir=run_dir / MEMBERS, name=None, force=False, resume=member, **options)
    seed = cfg.member_seed(config, k)
    print_fn(f"Ensemble {run_dir}: member {k} of {config.members} (seed {seed})")
    member_config = dataclasses.replace(config, members=1, seed=seed,
                                        budget=config.budget / config.members)
    # force: a member folder without a checkpoint holds nothing to keep (a start cut short).
    return _train_one(member_config, out_dir=run_dir / MEMBERS, name=str(k), force=True, resume=None, **options)


def _finished_member(member: Path, device: str) -> TrainResult:
    """A member that finished before this call, read back from its run directory onto the
    training device (where the members trained in this call are)."""
    classifier = load_classifier(member, device)
    return TrainResult(member, read_metrics_csv(member / "metrics.csv"), classifier.model,
                       cfg.from_dict(dict(classifier.config)), False, classifier.global_step)


def _settled(config: TrainConfig, member: TrainConfig) -> TrainConfig:
    """The ensemble's config with what its first member resolved: steps instead of a budget, the
    epochs they span, the precision and the compile choice."""
    return dataclasses.replace(config, steps=member.steps, epochs=member.epochs, budget=0.0, amp=member.amp,
                               compile=member.compile)


def _ensemble_report(run_dir: Path, dataset: Any, print_fn: Callable[[str], None]) -> None:
    """Validation accuracy of the ensemble and of each member, printed and kept in ensemble.json."""
    result = evaluate(run_dir, "validation", dataset=dataset)
    members = ", ".join(f"{m.accuracy:.2%}" for m in result.members)
    write_json(run_dir / ENSEMBLE_REPORT, {"validation_accuracy": result.accuracy, "validation_loss": result.loss,
                                           "members": [dataclasses.asdict(m) for m in result.members]})
    print_fn(f"Ensemble of {len(result.members) or 1}: validation accuracy {result.accuracy:.2%} (members alone: "
             f"{members or f'{result.accuracy:.2%}'}); evaluate it with: mnist-cnn evaluate {run_dir}")


def _resume_point(resume: str | Path) -> tuple[Path, dict[str, Any]]:
    """The run directory to continue and its checkpoint."""
    run_dir = resolve_run(resume)
    if read_run_info(run_dir)["status"] == "complete":
        raise UsageError(f"{run_dir} already finished all its epochs; nothing to resume")
    return run_dir, load_checkpoint(run_dir / CHECKPOINT)


def _new_run_dir(config: TrainConfig, out_dir: str | Path, name: str | None, force: bool) -> Path:
    path = create_run_dir(out_dir, name if name is not None else default_run_name(config.preset), force)
    write_json(path / "config.json", cfg.to_dict(config))
    return path


def _open_logger(state: TrainState, data: TrainData, run: TrainingRun, print_fn: Callable[[str], None],
                 progress: bool | None) -> RunLogger | NullLogger:
    if not run.writes:
        return NullLogger()
    resumed = state.global_step > 0
    logger = RunLogger(run.dir, purge_step=state.global_step + 1 if resumed else None, print_fn=print_fn,
                       progress=progress)
    logger.dataset_sizes(len(data.train_y), data.n_test, len(data.validation_y))
    if resumed:
        print_fn(f"Resuming {run.dir} at epoch {state.epoch + 1}, step {state.step_in_epoch}/{state.steps_per_epoch}")
    else:
        logger.graph(state.model, to_input(data.train_x[:1], state.config.channels_last))
    return logger


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGINT/SIGTERM into a StopRequest the loop checks after each step (a second one aborts)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signal_name is not None:
            raise KeyboardInterrupt
        stop.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _print_nothing(*args: Any, **kwargs: Any) -> None:
    """What ranks other than 0 do instead of printing."""


def _interrupt_position(loop: Loop, state: TrainState) -> str:
    why = f"by {loop.stop.signal_name}" if loop.stop.signal_name else "on request"
    epoch, step, steps = state.epoch, state.step_in_epoch, state.steps_per_epoch
    return f"{why} at epoch {epoch + (1 if step else 0)}, step {step or steps}/{steps}"
