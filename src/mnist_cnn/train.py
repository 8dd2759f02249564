"""The training loop: `train_step` and `evaluate` are its seams, `train` is the whole loop.

Data stay in memory as uint8 tensors on the training device and batches are gathered by
index, so no Python runs per sample. Per-step metrics accumulate in tensors and are read once
per epoch (a device-to-host copy is a sync point on a GPU). A checkpoint after every epoch (and
every `checkpoint_every` steps) holds the whole state, so `resume` continues bit-exactly.
"""
from __future__ import annotations

import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn import config as cfg
from mnist_cnn import distributed
from mnist_cnn.augment import augment
from mnist_cnn.checkpoint import (CheckpointWriteError, load_checkpoint, load_model_state, remove_stale_temp_files,
                                  save_checkpoint)
from mnist_cnn.config import TrainConfig
from mnist_cnn.distributed import DistInfo
from mnist_cnn.ema import EMA
from mnist_cnn.errors import CheckpointError, MnistCnnError, UsageError
from mnist_cnn.models import create_model
from mnist_cnn.runlog import EpochRecord, RunLogger
from mnist_cnn.runs import (CHECKPOINT, create_run_dir, default_run_name, environment_info, lock_run, now_iso,
                            read_json, resolve_run, write_json)


# What a checkpoint needs beyond config and weights to continue a run (evaluate needs only those).
RESUME_KEYS = ("optimizer", "schedule", "rng", "history", "epoch", "step_in_epoch", "global_step",
               "epoch_seconds", "step_loss", "step_correct")


class TrainingInterrupted(MnistCnnError):
    """SIGINT/SIGTERM arrived; the state was saved and the run can be resumed."""

    exit_code = 130


@dataclass
class TrainResult:
    run_dir: Path
    history: list[EpochRecord]
    model: nn.Module
    config: TrainConfig


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


def to_input(images_u8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(N, C, 28, 28) uint8 pixels -> float32 in [0, 1], the lesson's input scaling."""
    x = images_u8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    # fused=True (speed, issue #4): one kernel updates every tensor instead of ~10 ops per tensor;
    # the same update rule (agrees with the per-tensor loop to ~1e-8), ~3x faster optimizer step
    # on CPU, and no host syncs on CUDA.
    if config.optimizer == "adam":
        # Adam's defaults (betas 0.9/0.999, eps 1e-8) equal TF1's AdamOptimizer's.
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
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


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, label_smoothing: float = 0.0,
               amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step. Returns (mean loss, number correct) as 0-d tensors: no host sync.

    amp: forward and loss in bfloat16 autocast (CUDA only; bf16 needs no gradient scaler)."""
    with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == labels).sum()


@torch.inference_mode()
def predict_logits(model: nn.Module, images_u8: torch.Tensor, batch_size: int = 1000,
                   channels_last: bool = True) -> torch.Tensor:
    """Logits (N, classes) float32 for uint8 images (N, C, 28, 28), on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(to_input(images_u8[i:i + batch_size].to(device), channels_last)).float()
           for i in range(0, len(images_u8), batch_size)]
    model.train(was_training)
    if not out:
        return torch.empty(0, 0, device=device)
    return torch.cat(out)


def evaluate(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
             channels_last: bool = True) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a whole split."""
    logits = predict_logits(model, images_u8, batch_size, channels_last)
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(data_order: torch.Generator, epoch_start_order: torch.Tensor) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        # The data-order generator as it was when this epoch's permutation was drawn.
        "data_order_epoch_start": epoch_start_order,
        "data_order": data_order.get_state(),
    }


def restore_rng_state(state: dict[str, Any], data_order: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    data_order.set_state(state["data_order"])


@contextmanager
def stop_on_signals() -> Iterator[dict[str, Any]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step (a second one aborts)."""
    flag: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["signal"] is not None:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train(config: TrainConfig | None = None, *, out_dir: str | Path = "runs", name: str | None = None,
          force: bool = False, resume: str | Path | None = None, dataset: Any = None,
          print_fn: Callable[[str], None] = print, progress: bool | None = None,
          stop_after_steps: int | None = None) -> TrainResult:
    """Train a model into a run directory (or continue one with `resume`).

    `dataset` may be a preloaded `mnist_cnn.data.Dataset` (tests, notebooks); otherwise the
    config's data set is loaded. `stop_after_steps` simulates an interruption (tests).
    """
    state: dict[str, Any] | None = None
    if resume is not None:
        run_dir = resolve_run(resume)
        run_info = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
        if run_info.get("status") == "complete":
            raise UsageError(f"{run_dir} already finished all its epochs; nothing to resume")
        state = load_checkpoint(run_dir / CHECKPOINT)
        missing = [k for k in RESUME_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"{run_dir / CHECKPOINT} holds weights but not the training state to resume "
                                  f"(no {', '.join(missing)})")
        try:
            config = cfg.from_dict(dict(state["config"]))
        except UsageError as e:
            raise CheckpointError(f"{run_dir / CHECKPOINT} holds a config this mnist-cnn cannot use: {e}") from None
    else:
        config = config or cfg.make_config()
    # Under torchrun this process is one rank of several (see distributed.py): it joins the
    # group, and only rank 0 writes the run directory and prints.
    device = select_device(config.device)
    if config.amp == "bf16" and device.type != "cuda":  # config.validate catches device=cpu; this, auto
        raise UsageError("amp bf16 needs a CUDA GPU and none is available; use --amp off on the CPU")
    dist_info = distributed.init_distributed(device)
    device = distributed.device_for(device, dist_info)
    write_json_main = write_json if dist_info.is_main else _skip
    print_fn = print_fn if dist_info.is_main else _skip
    run_lock = None
    try:
        distributed.batch_shard(config.batch_size, dist_info)  # an indivisible global batch fails before any run dir exists
        if state is None:
            def new_run_dir() -> Path:
                path = create_run_dir(out_dir, name or default_run_name(config.preset), force)
                write_json(path / "config.json", cfg.to_dict(config))
                return path

            run_dir = distributed.from_main(new_run_dir, dist_info)
        if dist_info.is_main:
            run_lock = lock_run(run_dir)  # one training process per run: a second one is refused here
        if state is not None and dist_info.is_main:
            remove_stale_temp_files(run_dir)  # left by writes a kill -9 cut short; nobody else writes here now
        run_info = {"status": "running", "started": now_iso(), "resumed_from_step": state["global_step"] if state else None}
        write_json_main(run_dir / "run.json", run_info)

        try:
            if config.threads:
                torch.set_num_threads(config.threads)
            seed_everything(config.seed)
            if dataset is None:
                from mnist_cnn.data import load_dataset

                dataset = load_dataset(config.dataset, config.data_dir, config.validation_size)
            write_json_main(run_dir / "environment.json", {**environment_info(device, config.seed), "data_source": getattr(dataset, "source", ""),
                                                           "world_size": dist_info.world_size})
            result = _train_loop(config, run_dir, dataset, device, state, print_fn, progress, stop_after_steps,
                                 dist_info)
        except TrainingInterrupted:
            _record_status(write_json_main, run_dir, {**run_info, "status": "interrupted", "stopped": now_iso()})
            distributed.barrier(dist_info)  # torchrun stops every rank once one exits: let rank 0 finish writing
            raise
        except (OSError, CheckpointWriteError) as e:  # full disk, lost mount, read-only directory...
            _record_status(write_json_main, run_dir, {**run_info, "status": "failed", "stopped": now_iso()})
            reason = str(e) if isinstance(e, CheckpointWriteError) else f"cannot write {e.filename or run_dir}: {e.strerror or e}"
            if (run_dir / CHECKPOINT).is_file():
                reason += f". Once that is fixed, resume with: mnist-cnn train --resume {run_dir}"
            raise MnistCnnError(reason) from e
        except BaseException:
            _record_status(write_json_main, run_dir, {**run_info, "status": "failed", "stopped": now_iso()})
            raise
        write_json_main(run_dir / "run.json", {**run_info, "status": "complete", "finished": now_iso()})
        distributed.barrier(dist_info)  # leave the group together (rank 0 was still plotting)
        return result
    finally:
        if run_lock is not None:
            run_lock.close()
        distributed.cleanup(dist_info)


def _record_status(write: Callable[[Path, Any], None], run_dir: Path, info: dict[str, Any]) -> None:
    """Best effort: a status that cannot be written (full disk) must not hide the error being reported."""
    try:
        write(run_dir / "run.json", info)
    except OSError:
        pass


def _skip(*args: Any, **kwargs: Any) -> None:
    """What ranks other than 0 do instead of writing run files or printing."""


def _train_loop(config: TrainConfig, run_dir: Path, dataset: Any, device: torch.device,
                state: dict[str, Any] | None, print_fn: Callable[[str], None], progress: bool | None,
                stop_after_steps: int | None, dist_info: DistInfo = distributed.SINGLE) -> TrainResult:
    from mnist_cnn.plots import plot_curves, plot_samples

    channels_last = config.channels_last
    train_x, train_y = dataset.train.images.to(device), dataset.train.labels.to(device)
    if config.train_subset:
        train_x, train_y = train_x[:config.train_subset], train_y[:config.train_subset]
    val_x, val_y = dataset.validation.images, dataset.validation.labels
    n_train, batch = len(train_y), config.batch_size
    steps_per_epoch = n_train // batch
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size {batch} is larger than the training set ({n_train} images)")
    total_steps = steps_per_epoch * config.epochs
    shard = distributed.batch_shard(batch, dist_info)  # this rank's part of each global batch
    evaluate_split = distributed.sharded_evaluate(evaluate, dist_info)

    model = create_model(config.model, num_classes=len(dataset.class_names),
                         in_channels=dataset.train.images.shape[1], depth=config.depth, width=config.width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    schedule = make_schedule(config, optimizer, total_steps)
    ema = EMA(model, config.ema) if config.ema else None  # averaged weights, updated after each step
    eval_model = ema.model if ema is not None else model  # what validation sees and evaluation loads
    data_order = torch.Generator().manual_seed(config.seed)  # CPU generator: same order on any device

    history: list[EpochRecord] = []
    epoch, step_in_epoch, epoch_seconds_before = 0, 0, 0.0
    step_loss = torch.zeros(steps_per_epoch, device=device)
    step_correct = torch.zeros(steps_per_epoch, device=device, dtype=torch.long)
    epoch_start_order = data_order.get_state()
    if state is not None:
        load_model_state(model, state["model"], run_dir / CHECKPOINT)
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        restore_rng_state(state["rng"], data_order)
        epoch_start_order = state["rng"]["data_order_epoch_start"]
        history = [EpochRecord(**r) for r in state["history"]]
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        epoch_seconds_before = state["epoch_seconds"]
        step_loss.copy_(state["step_loss"])
        step_correct.copy_(state["step_correct"])

    global_step = epoch * steps_per_epoch + step_in_epoch  # optimizer steps done so far
    logger = (RunLogger(run_dir, purge_step=global_step + 1 if state else None, print_fn=print_fn, progress=progress)
              if dist_info.is_main else distributed.NullLogger())
    logger.dataset_sizes(n_train, len(dataset.test), len(val_y))
    if state is None:
        logger.graph(model, to_input(train_x[:1], channels_last))
    else:
        print_fn(f"Resuming {run_dir} at epoch {epoch + 1}, step {step_in_epoch}/{steps_per_epoch}")

    def checkpoint(epoch_seconds: float) -> None:
        if not dist_info.is_main:
            return
        save_checkpoint(run_dir / CHECKPOINT, {
            "config": cfg.to_dict(config), "class_names": list(dataset.class_names),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict() if schedule is not None else None,
            "ema": ema.state_dict() if ema is not None else None,
            "rng": rng_state(data_order, epoch_start_order),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "epoch_seconds": epoch_seconds, "step_loss": step_loss.cpu(), "step_correct": step_correct.cpu(),
            "history": [asdict(r) for r in history],
        })

    def reduce_steps(first: int, stop: int | None = None) -> None:
        """Per-step metrics of steps first..stop from this rank's shard to the global batch's,
        once per logged range (a collective)."""
        distributed.all_reduce_mean_(step_loss[first:stop], dist_info)
        distributed.all_reduce_sum_(step_correct[first:stop], dist_info)

    model.train()
    step_model = distributed.wrap_model(model, dist_info, device)  # DDP under torchrun, else model
    if config.compile:  # compiles on the first step (tens of seconds); checkpoints keep `model`'s plain names
        step_model = torch.compile(step_model)
    with stop_on_signals() as stop:
        while epoch < config.epochs:
            started = time.time()
            if step_in_epoch == 0:
                epoch_start_order = data_order.get_state()
            else:  # mid-epoch resume: draw this epoch's permutation again from its saved start
                data_order.set_state(epoch_start_order)
            order = torch.randperm(n_train, generator=data_order).to(device)
            walltimes: list[float] = []
            logged_from = step_in_epoch
            bar = logger.epoch_bar(epoch + 1, steps_per_epoch, step_in_epoch)
            while step_in_epoch < steps_per_epoch:
                idx = order[step_in_epoch * batch:(step_in_epoch + 1) * batch]
                idx = idx[shard]
                images = augment(to_input(train_x[idx], channels_last), config.augment)  # (B, C, 28, 28) float
                loss, correct = train_step(step_model, optimizer, images, train_y[idx],
                                           config.label_smoothing, amp=config.amp == "bf16")
                if schedule is not None:
                    schedule.step()
                step_loss[step_in_epoch] = loss
                step_correct[step_in_epoch] = correct
                walltimes.append(time.time())
                step_in_epoch += 1
                global_step += 1
                if ema is not None:
                    ema.update(model, global_step)
                bar.update()
                interrupted = distributed.agreed_signal(stop["signal"], dist_info, device, global_step) or (stop_after_steps is not None and global_step >= stop_after_steps)
                periodic = config.checkpoint_every and global_step % config.checkpoint_every == 0
                if (interrupted or periodic) and step_in_epoch < steps_per_epoch:
                    reduce_steps(logged_from, step_in_epoch)
                    logger.train_steps(epoch * steps_per_epoch + logged_from + 1,
                                       step_loss[logged_from:step_in_epoch], step_correct[logged_from:step_in_epoch] / batch,
                                       walltimes)
                    logger.flush()
                    walltimes, logged_from = [], step_in_epoch
                    checkpoint(epoch_seconds_before + time.time() - started)
                if interrupted:
                    break
            bar.close()
            if step_in_epoch < steps_per_epoch:  # interrupted mid-epoch, state saved above
                logger.close()
                raise TrainingInterrupted(_interrupt_message(stop["signal"], run_dir, epoch, step_in_epoch, steps_per_epoch))

            reduce_steps(logged_from)
            logger.train_steps(epoch * steps_per_epoch + logged_from + 1, step_loss[logged_from:],
                               step_correct[logged_from:] / batch, walltimes)
            val_loss, val_acc = evaluate_split(eval_model, val_x, val_y, channels_last=channels_last)
            record = EpochRecord(
                epoch=epoch + 1, seconds=epoch_seconds_before + time.time() - started,
                lr=optimizer.param_groups[0]["lr"],
                train_loss=step_loss.double().mean().item(),
                train_accuracy=(step_correct.double() / batch).mean().item(),
                validation_loss=val_loss, validation_accuracy=val_acc)
            history.append(record)
            epoch, step_in_epoch, epoch_seconds_before = epoch + 1, 0, 0.0
            logger.epoch_end(record, global_step, history)
            logger.histograms(model, global_step)
            checkpoint(0.0)
            if distributed.agreed_signal(stop["signal"], dist_info, device) and epoch < config.epochs:
                logger.close()
                raise TrainingInterrupted(_interrupt_message(stop["signal"], run_dir, epoch, 0, steps_per_epoch))
    logger.hparams(cfg.to_dict(config), history)
    logger.close()
    if not dist_info.is_main:
        return TrainResult(run_dir, history, model, config)

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_curves(history, plots / "curves.png")
    val_logits = predict_logits(eval_model, val_x[:2000].to(device), channels_last=channels_last).cpu()
    plot_samples(val_x[:2000], val_y[:2000], val_logits.argmax(1), dataset.class_names, plots / "samples.png")
    best = max(history, key=lambda r: r.validation_accuracy)
    print_fn(f"Best validation accuracy {best.validation_accuracy:.4f} at epoch {best.epoch}. "
             f"Run saved in {run_dir} (view with: tensorboard --logdir {run_dir.parent})")
    print_fn(f"Plots: {plots / 'curves.png'}, {plots / 'samples.png'}; test accuracy: mnist-cnn evaluate {run_dir}")
    return TrainResult(run_dir, history, eval_model, config)


def _interrupt_message(signal_name: str | None, run_dir: Path, epoch: int, step: int, steps: int) -> str:
    why = f"by {signal_name}" if signal_name else "on request"
    return (f"training stopped {why} at epoch {epoch + (1 if step else 0)}, step {step or steps}/{steps}; "
            f"state saved. Resume with: mnist-cnn train --resume {run_dir}")
