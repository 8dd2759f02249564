"""`tune`: an Optuna study whose trials are ordinary training runs in runs/tune-NAME/trial-NNNN.

Each trial trains with `train()`, reports validation accuracy after every epoch and is pruned
by a MedianPruner when it lags the median of earlier trials at the same epoch. Median, not
Hyperband: a trial here has only a few epochs (3 in the measured study), too few rungs for
Hyperband's brackets, and the median rule works unchanged with asynchronous parallel workers.
Selection uses the validation split only; the test split is read once, for the best trial.
"""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import mnist_cnn.tune.storage as st
from mnist_cnn import config as cfg
from mnist_cnn.config import TuneSettings
from mnist_cnn import data  # data.load_dataset is looked up per call: tests swap in synthetic data
from mnist_cnn.errors import MnistCnnError, UsageError
from mnist_cnn.inference import select_device
from mnist_cnn.precision import resolve_amp
from mnist_cnn.train import train
from mnist_cnn.tune.report import StudyReport, write_report
from mnist_cnn.tune.space import Param, check_space, default_space, format_space, integer_fields, read_space_file, suggest

FINISHED = ("COMPLETE", "PRUNED")  # the states that count towards --trials


class TuneInterrupted(MnistCnnError):
    """Ctrl-C/SIGTERM: the running trials are marked failed, everything else is kept."""

    exit_code = 130


@dataclass
class StudyPlan:
    """A study's settings after every check `prepare` can make before the study is opened."""

    settings: TuneSettings
    space: dict[str, Param]
    threads: int


def prepare(settings: TuneSettings) -> StudyPlan:
    """Check everything that can be checked before a study is opened."""
    if not settings.study or "/" in settings.study or settings.study.startswith("."):
        raise UsageError(f"--study {settings.study!r}: give a plain name (it becomes the folder tune-NAME)")
    if settings.trials < 1 or settings.jobs < 1:
        raise UsageError("--trials and --jobs must be positive integers")
    if settings.timeout is not None and settings.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {settings.timeout:g}")
    fixed = cfg.make_config(settings.preset, **settings.fixed)  # the fixed part alone must be a valid config
    if fixed.members > 1 or fixed.budget:  # a trial is one network whose epochs the pruner counts
        raise UsageError(f"preset {settings.preset} trains an ensemble to a time budget; tune searches single "
                         "networks trained for a number of epochs: start from another preset (e.g. --preset best)")
    resolve_amp(fixed.amp, fixed.preset, select_device(fixed.device))  # a refused --amp fails now, not every trial
    space = (read_space_file(settings.space_file) if settings.space_file
             else default_space(settings.preset, settings.fixed))
    check_space(space, settings.preset, settings.fixed)
    if not space:
        raise UsageError("nothing left to search: every field of the default space is fixed on the command line")
    threads = settings.fixed.get("threads") or max(1, st.cpu_cores() // settings.jobs)
    return StudyPlan(settings, space, threads)


def open_study(p: StudyPlan, worker: int = 0) -> tuple[Any, Any]:
    """Create or load the study; a study started with another space, preset or fixed flags is refused."""
    optuna = st.require_optuna()
    s = p.settings
    storage = st.open_storage(s.storage, s.study_dir, s.heartbeat_s)
    s.study_dir.mkdir(parents=True, exist_ok=True)
    definition = {"preset": s.preset, "fixed": {k: v for k, v in sorted(s.fixed.items()) if k != "threads"},
                  "space": {k: v.to_dict() for k, v in p.space.items()}}
    try:
        study = optuna.create_study(study_name=s.study, storage=storage, direction="maximize", load_if_exists=True,
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials),
                                    sampler=optuna.samplers.TPESampler(
                                        seed=None if s.sampler_seed is None else s.sampler_seed + worker))
    except Exception as e:  # a database that went away after connecting, a corrupt journal...
        raise MnistCnnError(f"cannot open study {s.study!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    saved = study.user_attrs.get("definition")
    if saved is None:
        if study.trials:
            raise UsageError(f"study {s.study!r} exists but was not made by mnist-cnn tune")
        stale = sorted(d.name for d in s.study_dir.glob("trial-*"))
        if stale:
            raise UsageError(f"{s.study_dir} holds trial runs of an earlier study ({stale[0]}, ...); "
                             "choose another --study or move them away")
        study.set_user_attr("definition", definition)
    elif saved != definition:
        raise UsageError(f"study {s.study!r} was started with other settings ({_describe(saved)}); "
                         f"run it with those, or choose another --study")
    return study, storage


def _describe(definition: dict[str, Any]) -> str:
    fixed = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in definition["fixed"].items())
    return f"--preset {definition['preset']} {fixed}, space: {', '.join(definition['space'])}".replace("  ", " ")


def finished_count(study: Any) -> int:
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def started_count(study: Any, below: int | None = None) -> int:
    """Finished and running trials (numbered below `below`, if given): what other workers will deliver."""
    return sum(t.state.name in (*FINISHED, "RUNNING") and (below is None or t.number < below)
               for t in study.get_trials(deepcopy=False))


class SurplusTrial(UsageError):
    """A trial created after the study already had --trials finished or running ones."""


def _stop_when_enough_started(trials: int) -> Callable[[Any, Any], None]:
    # Counting running trials too is what keeps K workers from starting K-1 trials too many: with
    # finished ones only, every worker that ends a trial just before the target starts another.
    def callback(study: Any, trial: Any) -> None:
        if started_count(study) >= trials:
            study.stop()
    return callback


def run_worker(p: StudyPlan, worker: int, dataset: Any = None, print_fn: Callable[[str], None] = print) -> None:
    """One worker: runs trials until the study has `trials` finished ones (or the timeout)."""
    optuna = st.require_optuna()
    s = p.settings
    study, storage = open_study(p, worker)
    is_journal = s.storage is None
    st.fail_dead_trials(study, storage, s.study_dir, is_journal)
    if dataset is None and not {"dataset", "data_dir", "validation_size"} & set(p.space):
        base = cfg.make_config(s.preset, **s.fixed)
        dataset = data.load_dataset(base.dataset, base.data_dir, base.validation_size, progress=False)  # once, not per trial
    remaining = s.trials - started_count(study)
    if remaining <= 0:
        return
    study.optimize(lambda trial: _objective(trial, p, worker, dataset, storage, print_fn),
                   n_trials=remaining, timeout=s.timeout, catch=(UsageError,),
                   callbacks=[_stop_when_enough_started(s.trials)])


def _objective(trial: Any, p: StudyPlan, worker: int, dataset: Any, storage: Any,
               print_fn: Callable[[str], None]) -> float:
    optuna = st.require_optuna()
    s = p.settings
    alive = st.hold_alive_lock(s.study_dir, trial.number)
    try:
        if s.storage is None:
            st.fail_dead_trials(trial.study, storage, s.study_dir, True)  # workers killed since this one started
        if started_count(trial.study, below=trial.number) >= s.trials:
            # Two workers counted at the same moment: trial numbers are handed out atomically by the
            # storage, so the later one stands down before training, leaving exactly --trials.
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            message = f"trial {trial.number} (worker {worker}) not run: the study already has {s.trials} trials"
            print_fn(message)
            raise SurplusTrial(message)
        params = suggest(trial, p.space, integer_fields())
        config = cfg.make_config(s.preset, **{**s.fixed, **params, "threads": p.threads})
        name = f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(s.study_dir / name))

        def on_epoch_end(record: Any) -> bool:
            trial.report(record.validation_accuracy, record.epoch)
            return trial.should_prune()

        started = time.time()
        try:
            result = train(config, out_dir=s.study_dir, name=name, dataset=dataset, print_fn=lambda line: None,
                           progress=False, on_epoch_end=on_epoch_end)
        except MnistCnnError as e:
            print_fn(f"trial {trial.number} (worker {worker}) failed: {e}")
            raise
        last = result.history[-1]
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        outcome = f"pruned after epoch {last.epoch}" if result.stopped_early else "complete"
        print_fn(f"trial {trial.number} (worker {worker}): validation accuracy {last.validation_accuracy:.4f}, "
                 f"{outcome}, {time.time() - started:.0f} s  [{shown}]")
        if result.stopped_early:
            raise optuna.TrialPruned()
        return last.validation_accuracy
    finally:
        if alive is not None:
            alive.close()


def _worker_main(p: StudyPlan, worker: int, dataset: Any, errors: Any) -> None:
    """Entry point of a `--jobs` worker process (spawned: a fresh interpreter)."""
    _die_with_parent()
    try:
        run_worker(p, worker, dataset, lambda line: print(line, flush=True))  # lines of K workers interleave whole
    except KeyboardInterrupt:
        errors.put((worker, "interrupted"))
    except MnistCnnError as e:
        errors.put((worker, str(e) if not _is_interrupt(e) else "interrupted"))
    except Exception as e:  # a bug; the parent reports it as one line rather than K tracebacks
        errors.put((worker, f"worker crashed: {type(e).__name__}: {e}"))


def _is_interrupt(e: BaseException) -> bool:
    return getattr(e, "exit_code", 0) == 130


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the tuner dies, so `kill -9 tuner` leaves no orphan training."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_workers(p: StudyPlan, dataset: Any = None, print_fn: Callable[[str], None] = print) -> None:
    """Run the study's trials: in this process (--jobs 1) or in `jobs` spawned worker processes."""
    if p.settings.jobs == 1:
        try:
            run_worker(p, 0, dataset, print_fn)
        except KeyboardInterrupt:
            raise interrupted(p) from None
        except MnistCnnError as e:
            if _is_interrupt(e):
                raise interrupted(p) from None
            raise
        return
    ctx = multiprocessing.get_context("spawn")  # fork after torch has threads can deadlock
    errors = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(p, i, dataset, errors), daemon=True) for i in range(p.settings.jobs)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:  # the workers got the Ctrl-C too: let them mark their trials and exit
        for proc in procs:
            proc.join(timeout=60)
        raise interrupted(p) from None
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    if any(msg == "interrupted" for _, msg in problems):
        raise interrupted(p)
    if problems:
        raise MnistCnnError(f"worker {problems[0][0]}: {problems[0][1]}")
    crashed = [i for i, proc in enumerate(procs) if proc.exitcode]
    if crashed:
        raise MnistCnnError(f"worker {crashed[0]} died (exit code {procs[crashed[0]].exitcode}); "
                            f"run the same command again to continue the study")


def interrupted(p: StudyPlan) -> TuneInterrupted:
    again = f": {p.settings.continue_command}" if p.settings.continue_command else " by running the same command again"
    return TuneInterrupted(f"tuning interrupted; the study in {p.settings.study_dir} is kept "
                           f"(running trials marked failed). Continue it{again}")


def describe_start(p: StudyPlan, study: Any) -> str:
    s = p.settings
    where = s.storage.split("@")[-1] if s.storage else str(s.study_dir / st.JOURNAL)
    return (f"Study {s.study!r} in {where}: {finished_count(study)}/{s.trials} trials finished; "
            f"{s.jobs} worker(s) x {p.threads} thread(s). Searching: {format_space(p.space)}")


def tune(settings: TuneSettings, dataset: Any = None, print_fn: Callable[[str], None] = print) -> StudyReport:
    """Run (or continue) a study until it has `settings.trials` finished trials, then report.

    `dataset`: a preloaded mnist_cnn.data.Dataset (tests); otherwise each worker loads the
    config's data set once. Interrupted: TuneInterrupted, the study kept for the next call."""
    prepared = prepare(settings)
    try:
        study, storage = open_study(prepared)  # checks the storage before any worker starts
        dead = st.fail_dead_trials(study, storage, settings.study_dir, settings.storage is None)
        if dead:
            print_fn(f"Marked trial(s) {', '.join(map(str, dead))} failed: their process is gone")
        print_fn(describe_start(prepared, study))
        if finished_count(study) < settings.trials:
            run_workers(prepared, dataset, print_fn)
        st.fail_dead_trials(study, storage, settings.study_dir, settings.storage is None)
        return write_report(study, settings.study_dir, dataset)
    except KeyboardInterrupt:  # outside a trial (a trial's Ctrl-C arrives as TuneInterrupted)
        raise interrupted(prepared) from None
