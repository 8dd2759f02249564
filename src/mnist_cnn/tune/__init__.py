"""Hyperparameter search on Optuna (the `tune` extra): `tune(settings)` from Python or
`mnist-cnn tune` from the shell. space.py says what is searched, storage.py where the study
lives and how dead trials are found, study.py runs trials, report.py writes the results."""
from mnist_cnn.config import TuneSettings
from mnist_cnn.tune.report import StudyReport, format_report
from mnist_cnn.tune.study import TuneInterrupted, tune

__all__ = ["StudyReport", "TuneInterrupted", "TuneSettings", "format_report", "tune"]
