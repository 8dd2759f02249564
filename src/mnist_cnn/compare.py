"""Several runs side by side: what each trained, how well, how fast, how big.

`compare_runs(runs)` reads only what every run directory already holds (config.json, run.json,
metrics.csv, and evaluation/test.json when `mnist-cnn evaluate` has been run on it), so it is
cheap and works on finished, interrupted and running runs alike. `format_table` prints them;
`plots.plot_comparison` draws their validation curves. For the hyperparameters, every finished
run also writes TensorBoard's HParams summary: `tensorboard --logdir <their parent>`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from mnist_cnn.data.registry import DATASETS
from mnist_cnn.errors import UsageError
from mnist_cnn.fileio import read_json
from mnist_cnn.models import count_parameters, create_model, saved_shape
from mnist_cnn.runs import (ENSEMBLE_REPORT, EpochRecord, is_ensemble_run, member_dirs,
                            read_metrics_csv, read_run_info)


@dataclass
class RunSummary:
    name: str
    path: str
    status: str                       # complete / interrupted / failed / running / unknown
    preset: str
    model: str
    dataset: str
    parameters: int
    epochs_done: int
    epochs: int                       # as configured
    final_validation_accuracy: float | None
    best_validation_accuracy: float | None
    best_epoch: int | None
    test_accuracy: float | None       # from RUN/evaluation/test.json, None until evaluated
    minutes: float                    # training wall time, summed over epochs
    history: list[EpochRecord]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "history"}


def summarize_run(run: str | Path) -> RunSummary:
    """What one run directory says about itself."""
    path = Path(run)
    if path.is_file() and path.suffix == ".pt":
        path = path.parent
    if not (path / "config.json").is_file():
        raise UsageError(f"{run} is not an mnist-cnn run directory (no config.json)")
    config = read_json(path / "config.json")
    status = read_run_info(path)["status"]
    ensemble = is_ensemble_run(path)
    members = member_dirs(path) if ensemble else [path]
    # An ensemble's history is its members' epochs one after another; its validation accuracy is the ensemble's.
    history = [r for m in members if (m / "metrics.csv").is_file() for r in read_metrics_csv(m / "metrics.csv")]
    spec = DATASETS.get(config.get("dataset", ""))
    try:
        parameters = len(members) * count_parameters(create_model(
            config["model"], num_classes=len(spec.class_names) if spec else 10, **saved_shape(config)))
    except (UsageError, KeyError):  # a model this version does not know
        parameters = 0
    test = path / "evaluation" / "test.json"
    test_accuracy = float(read_json(test)["accuracy"]) if test.is_file() else None
    if ensemble:
        return _ensemble_summary(path, status, config, parameters, history, test_accuracy)
    best = max(history, key=lambda r: r.validation_accuracy) if history else None
    return RunSummary(
        name=path.name, path=str(path), status=status, preset=config.get("preset", "?"),
        model=config.get("model", "?"), dataset=config.get("dataset", "?"), parameters=parameters,
        epochs_done=len(history), epochs=int(config.get("epochs", 0)),
        final_validation_accuracy=history[-1].validation_accuracy if history else None,
        best_validation_accuracy=best.validation_accuracy if best else None,
        best_epoch=best.epoch if best else None, test_accuracy=test_accuracy,
        minutes=sum(r.seconds for r in history) / 60, history=history)


def _ensemble_summary(path: Path, status: str, config: dict[str, Any], parameters: int, history: list[EpochRecord],
                      test_accuracy: float | None) -> RunSummary:
    """An ensemble's row: all its members' weights and epochs, and the ensemble's own validation
    accuracy (ensemble.json, written when the last member finishes)."""
    report = path / ENSEMBLE_REPORT
    validation = float(read_json(report)["validation_accuracy"]) if report.is_file() else None
    return RunSummary(
        name=path.name, path=str(path), status=status, preset=config.get("preset", "?"),
        model=f"{config.get('members')} x {config.get('model', '?')}", dataset=config.get("dataset", "?"),
        parameters=parameters, epochs_done=len(history), epochs=int(config.get("epochs", 0)) * int(config.get("members", 1)),
        final_validation_accuracy=validation, best_validation_accuracy=validation, best_epoch=None,
        test_accuracy=test_accuracy, minutes=sum(r.seconds for r in history) / 60, history=history)


def compare_runs(runs: Sequence[str | Path]) -> list[RunSummary]:
    if not runs:
        raise UsageError("compare needs at least one run directory")
    return [summarize_run(r) for r in runs]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(summaries: Sequence[RunSummary]) -> str:
    """A fixed-width table, one row per run (accuracies in percent)."""
    header = ("run", "preset", "model", "dataset", "params", "epochs", "minutes",
              "val final", "val best (epoch)", "test", "status")
    rows = [(s.name, s.preset, s.model, s.dataset, f"{s.parameters:,d}", f"{s.epochs_done}/{s.epochs}",
             f"{s.minutes:.1f}", _pct(s.final_validation_accuracy),
             "-" if s.best_epoch is None else f"{_pct(s.best_validation_accuracy)} ({s.best_epoch})",
             _pct(s.test_accuracy), s.status) for s in summaries]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = {4, 5, 6, 7, 8, 9}
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(str(v).rjust(w) if i in numeric else str(v).ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def tensorboard_command(summaries: Sequence[RunSummary]) -> str:
    """The command that shows these runs (and their HParams) together in TensorBoard."""
    parents = {Path(s.path).resolve().parent for s in summaries}
    if len(parents) == 1:
        return f"tensorboard --logdir {parents.pop()}"
    return "tensorboard --logdir_spec " + ",".join(f"{s.name}:{Path(s.path).resolve()}" for s in summaries)
