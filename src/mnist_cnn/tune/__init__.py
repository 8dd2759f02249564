"""Hyperparameter search on Optuna (the `tune` extra): `tune(settings)` from Python or
`mnist-cnn tune` from the shell. space.py says what is searched, storage.py where the study
lives and how dead trials are found, study.py runs trials, report.py writes the results."""
from __future__ import annotations

from typing import Any, Callable

from mnist_cnn.tune.report import StudyReport, format_report
from mnist_cnn.tune.study import TuneInterrupted, TuneSettings

__all__ = ["StudyReport", "TuneInterrupted", "TuneSettings", "format_report", "tune"]


def tune(settings: TuneSettings, dataset: Any = None, print_fn: Callable[[str], None] = print) -> StudyReport:
    """Run (or continue) a study until it has `settings.trials` finished trials, then report.

    `dataset`: a preloaded mnist_cnn.data.Dataset (tests); otherwise each worker loads the
    config's data set once. Interrupted: TuneInterrupted, the study kept for the next call."""
    from mnist_cnn.tune import storage as st
    from mnist_cnn.tune.report import write_report
    from mnist_cnn.tune.study import describe_start, finished_count, interrupted, open_study, prepare, run_workers

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
