"""Everything a training run writes into its directory, in one place: run.json's status and the
lock (`TrainingRun`), console, TensorBoard and CSV (`RunLogger`), and the closing figures.

The training loop hands this module numbers; it never prints or writes logs itself. The files'
names and types are runs.py's.
Console lines copy the lesson's; TensorBoard gets the lesson's two writers, `train/` (per batch)
and `validation/` (per epoch), with tags `loss` and `accuracy` on one global-step axis.
"""
from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mnist_cnn.checkpoint import CheckpointWriteError, remove_stale_temp_files, save_checkpoint
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.fileio import write_json
from mnist_cnn.runs import CHECKPOINT, EpochRecord, lock_run, now_iso, write_metrics_csv


class NullBar:
    """A progress bar that shows nothing (no terminal, or not the main process)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class NullLogger:
    """Stands in for RunLogger where nothing is written (torchrun ranks other than 0, the bench):
    RunLogger's methods, each doing nothing. A misspelt call fails here as it would there."""

    def dataset_sizes(self, train: int, test: int, validation: int) -> None:
        pass

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        pass

    def epoch_bar(self, epoch: int, total_steps: int, done: int = 0) -> NullBar:
        return NullBar()

    def train_steps(self, first_step: int, losses: torch.Tensor, accuracies: torch.Tensor,
                    walltimes: Sequence[float]) -> None:
        pass

    def epoch_end(self, record: EpochRecord, global_step: int, history: Sequence[EpochRecord]) -> None:
        pass

    def histograms(self, model: torch.nn.Module, global_step: int) -> None:
        pass

    def hparams(self, config: dict[str, Any], history: Sequence[EpochRecord]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _wait_until_newer_than_event_files(run_dir: Path) -> None:
    """TensorBoard reads a writer's event files in name order, and a name is
    `events.out.tfevents.<second>.<host>.<pid>.<counter>`: a resumed run's files must start in a
    later second than the interrupted run's, or (same process, counter 9 -> 11 sorts "11" < "9")
    the purge and the old steps are read in the wrong order. Waits < 1 s, and only when a run is
    resumed within a second of being stopped, which only happens in-process (tests, notebooks)."""
    seconds = [int(p.name.split(".")[3]) for p in run_dir.rglob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


class RunLogger:
    """Console + TensorBoard + metrics.csv for one run directory."""

    def __init__(self, run_dir: Path, purge_step: int | None = None,
                 print_fn: Callable[[str], None] = print, progress: bool | None = None) -> None:
        # ~1 s import, at first use: `import mnist_cnn.runlog` stays cheap for the CLI's --help.
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.print = print_fn
        # A bar only on a terminal: logs and CI get the plain epoch lines alone.
        self.progress = sys.stderr.isatty() if progress is None else progress
        # purge_step: on resume, TensorBoard hides events at or after it that a killed run
        # wrote past its last checkpoint, so no step appears twice.
        if purge_step is not None:
            _wait_until_newer_than_event_files(self.run_dir)
        self.train_writer = SummaryWriter(str(self.run_dir / "train"), purge_step=purge_step)
        self.validation_writer = SummaryWriter(str(self.run_dir / "validation"), purge_step=purge_step)

    def dataset_sizes(self, train: int, test: int, validation: int) -> None:
        self.print("Size of:")
        self.print(f"- Training-set:\t\t{train}")
        self.print(f"- Test-set:\t\t{test}")
        self.print(f"- Validation-set:\t{validation}")

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model graph, as the lesson's `writer.add_graph(sess.graph)`."""
        try:
            with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns it is deprecated
                warnings.simplefilter("ignore")
                self.train_writer.add_graph(model, example)
        except Exception as e:  # tracing is best-effort; a model that cannot be traced still trains
            self.print(f"note: model graph not written to TensorBoard ({type(e).__name__})")

    def epoch_bar(self, epoch: int, total_steps: int, done: int = 0):
        if not self.progress:
            return NullBar()
        return tqdm(total=total_steps, initial=done, desc=f"Epoch {epoch}", unit="step", leave=False, file=sys.stderr)

    def train_steps(self, first_step: int, losses: torch.Tensor, accuracies: torch.Tensor,
                    walltimes: Sequence[float]) -> None:
        """Per-batch training scalars for global steps first_step, first_step+1, ...

        Called once per epoch (and before a mid-epoch checkpoint) with the tensors the loop
        accumulated, so the hot loop never waits on a device-to-host copy.
        """
        losses_cpu, accuracies_cpu = losses.float().cpu().numpy(), accuracies.float().cpu().numpy()
        for i, (loss, acc, wall) in enumerate(zip(losses_cpu, accuracies_cpu, walltimes)):
            self.train_writer.add_scalar("loss", float(loss), first_step + i, walltime=wall)
            self.train_writer.add_scalar("accuracy", float(acc), first_step + i, walltime=wall)

    def epoch_end(self, record: EpochRecord, global_step: int, history: Sequence[EpochRecord]) -> None:
        self.validation_writer.add_scalar("loss", record.validation_loss, global_step)
        self.validation_writer.add_scalar("accuracy", record.validation_accuracy, global_step)
        self.train_writer.add_scalar("lr", record.lr, global_step)
        self.flush()
        write_metrics_csv(self.run_dir / "metrics.csv", history)
        # The lesson's lines, character for character (its accuracies printed as Python floats;
        # validation accuracy was a float32, hence the float32 round trip).
        self.print(f"Epoch {record.epoch} completed : Time usage {int(record.seconds)} seconds")
        self.print("\tAccuracy:")
        self.print(f"\t- Training Accuracy:\t{record.train_accuracy}")
        self.print(f"\t- Validation Accuracy:\t{float(np.float32(record.validation_accuracy))}")

    def histograms(self, model: torch.nn.Module, global_step: int) -> None:
        """Every parameter's histogram (TensorBoard's Histograms and Distributions tabs), once per epoch.

        Cost: one device-to-host copy of the weights (0.4 MB for the seed net) and a numpy
        histogram each, a few ms an epoch; never called per step. Non-finite values are left
        out (TensorBoard's histogram raises on NaN or inf); a tensor with none finite is skipped.
        """
        for name, param in model.named_parameters():
            name = name.removeprefix("module.")  # DistributedDataParallel's wrapper prefix
            values = param.detach().float().cpu().flatten()
            values = values[torch.isfinite(values)]
            if len(values):
                self.train_writer.add_histogram(f"weights/{name}", values, global_step)

    def hparams(self, config: dict[str, Any], history: Sequence[EpochRecord]) -> None:
        """The run's hyperparameters and final metrics for TensorBoard's HParams dashboard.

        Written once, when the run completes, by a writer in the run directory itself, so the
        dashboard lists each run under its own name next to the others in the log directory.
        """
        from torch.utils.tensorboard import SummaryWriter  # ~1 s import, at first use (see __init__)
        from torch.utils.tensorboard.summary import hparams

        if not history:
            return
        # HParams accepts numbers, strings and bools; None (e.g. no data_dir) is shown as "none".
        values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v).lower() if v is None else str(v))
                  for k, v in config.items()}
        last, best = history[-1], max(history, key=lambda r: r.validation_accuracy)
        metrics = {"hparam/validation_accuracy": last.validation_accuracy,
                   "hparam/validation_loss": last.validation_loss,
                   "hparam/best_validation_accuracy": best.validation_accuracy,
                   "hparam/train_loss": last.train_loss,
                   "hparam/epoch_seconds": sum(r.seconds for r in history) / len(history)}
        writer = SummaryWriter(str(self.run_dir))
        for summary in hparams(values, metrics):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():  # the dashboard reads metric values from these scalars
            writer.add_scalar(tag, value, last.epoch)
        writer.close()

    def flush(self) -> None:
        self.train_writer.flush()
        self.validation_writer.flush()

    def close(self) -> None:
        self.train_writer.close()
        self.validation_writer.close()


def closing_report(run_dir: Path, history: Sequence[EpochRecord], samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                   class_names: Sequence[str], print_fn: Callable[[str], None] = print) -> None:
    """The end of a run: curves and sample PNGs in run_dir/plots, and the closing lines.

    samples: (images (N, C, 28, 28) uint8, true labels (N,), predicted labels (N,)) of validation images.
    """
    # matplotlib (~1 s to import) at the end of a run only: a process killed or stopped before
    # then, or one that never trains, does not pay for it.
    from mnist_cnn.plots import plot_curves, plot_samples

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_curves(history, plots / "curves.png")
    plot_samples(*samples, class_names, plots / "samples.png")
    best = max(history, key=lambda r: r.validation_accuracy)
    print_fn(f"Best validation accuracy {best.validation_accuracy:.4f} at epoch {best.epoch}. "
             f"Run saved in {run_dir} (view with: tensorboard --logdir {run_dir.parent})")
    print_fn(f"Plots: {plots / 'curves.png'}, {plots / 'samples.png'}; test accuracy: mnist-cnn evaluate {run_dir}")


class TrainingRun:
    """One training process's hold on its run directory: the lock, run.json's status, and the
    files only the main process writes. With `writes=False` (torchrun ranks other than 0)
    every write is skipped, so the loop calls these the same way on every rank."""

    def __init__(self, run_dir: Path, writes: bool, resumed_from_step: int | None) -> None:
        self.dir = Path(run_dir)
        self.writes = writes
        self.info: dict[str, Any] = {"status": "running", "started": now_iso(), "resumed_from_step": resumed_from_step}
        self._lock: IO[str] | None = None

    def claim(self) -> None:
        """Lock the run (a second training process is refused here) and mark it running."""
        if not self.writes:
            return
        self._lock = lock_run(self.dir)
        if self.info["resumed_from_step"] is not None:
            remove_stale_temp_files(self.dir)  # left by writes a kill -9 cut short; nobody else writes here now
        write_json(self.dir / "run.json", self.info)

    def write_json(self, name: str, value: Any) -> None:
        if self.writes:
            write_json(self.dir / name, value)

    def save_checkpoint(self, state_dict: Callable[[], dict[str, Any]]) -> None:
        """Save `state_dict()` as the run's checkpoint (called only where this process writes)."""
        if self.writes:
            save_checkpoint(self.dir / CHECKPOINT, state_dict())

    def set_status(self, status: str, best_effort: bool = False) -> None:
        """run.json's status; `best_effort`: a status that cannot be written (full disk) must not
        hide the error being reported."""
        stamp = "finished" if status in ("complete", "stopped") else "stopped"
        try:
            self.write_json("run.json", {**self.info, "status": status, stamp: now_iso()})
        except OSError:
            if not best_effort:
                raise

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@contextmanager
def training_run(run_dir: Path, writes: bool, resumed_from_step: int | None,
                 barrier: Callable[[], None] = lambda: None) -> Iterator[TrainingRun]:
    """Hold `run_dir` for one training call; on the way out of an error, record why in run.json.

    An exception with a `run_status` attribute (an interrupt: "interrupted") sets that status,
    any other sets "failed"; file-system errors become one line naming what could not be written.
    `barrier` lets every torchrun rank wait for rank 0 to finish writing before they all exit.
    """
    run = TrainingRun(run_dir, writes, resumed_from_step)
    run.claim()
    try:
        yield run
    except BaseException as e:
        run.set_status(getattr(e, "run_status", "failed"), best_effort=True)
        if getattr(e, "run_status", None):
            barrier()
        if isinstance(e, (OSError, CheckpointWriteError)):  # full disk, lost mount, read-only directory...
            raise MnistCnnError(_write_failure(e, run_dir)) from e
        raise
    finally:
        run.release()


def _write_failure(e: OSError | CheckpointWriteError, run_dir: Path) -> str:
    reason = str(e) if isinstance(e, CheckpointWriteError) else f"cannot write {e.filename or run_dir}: {e.strerror or e}"
    if (run_dir / CHECKPOINT).is_file():
        reason += f". Once that is fixed, resume with: mnist-cnn train --resume {run_dir}"
    return reason
