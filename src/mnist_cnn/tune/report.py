"""A study's results in its folder: trials.csv, best-config.json, best.json and plots/*.png.

best-config.json is the best trial's resolved TrainConfig (threads reset to 0 = the machine's
default), so `mnist-cnn train --config best-config.json` trains that trial again. The best
trial is chosen on validation accuracy; its test accuracy is measured once, here, and reported.
"""
from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.evaluate import evaluate
from mnist_cnn.fileio import atomic_write_bytes, read_json, write_json


@dataclass
class StudyReport:
    study_dir: Path
    counts: dict[str, int]                       # trial state name -> trials
    best_number: int
    best_validation: float
    best_params: dict[str, Any]
    test_accuracy: float
    files: dict[str, Path] = field(default_factory=dict)
    skipped_plots: dict[str, str] = field(default_factory=dict)   # plot name -> why it was not drawn


def state_label(trial: Any) -> str:
    """Optuna's state, except SURPLUS for a trial a worker created but stood down from (study.py)."""
    return "SURPLUS" if trial.user_attrs.get("surplus") else trial.state.name


def write_trials_csv(study: Any, path: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "validation_accuracy", "epochs_reported", "seconds", *names, "run_dir"])
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                    if t.intermediate_values else "")
        writer.writerow([t.number, state_label(t), value, len(t.intermediate_values),
                         f"{seconds:.1f}" if seconds != "" else "", *[t.params.get(n, "") for n in names],
                         t.user_attrs.get("run_dir", "")])
    atomic_write_bytes(path, out.getvalue().encode())


def write_plots(study: Any, plots: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Optuna's matplotlib figures as PNGs. Importances use PED-ANOVA (no scikit-learn needed,
    unlike the default fANOVA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.importance import PedAnovaImportanceEvaluator

    plots.mkdir(parents=True, exist_ok=True)
    makers = {
        "history": lambda: vis.plot_optimization_history(study),
        "importances": lambda: vis.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator()),
        "parallel": lambda: vis.plot_parallel_coordinate(study),
        "slices": lambda: vis.plot_slice(study),
        "intermediate": lambda: vis.plot_intermediate_values(study),
    }
    written, skipped = {}, {}
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings on every matplotlib plot
                axes = make()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
            path = plots / f"{name}.png"
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written[name] = path
        except Exception as e:  # e.g. importances need 2+ finished trials; one missing plot is not fatal
            skipped[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            plt.close("all")
    return written, skipped


def test_accuracy(run_dir: Path, dataset: Any = None) -> float:
    """The run's test accuracy through `evaluate`'s path (mnist-cnn evaluate RUN)."""
    return evaluate(run_dir, "test", dataset=dataset, device="cpu").accuracy


def write_report(study: Any, study_dir: Path, dataset: Any = None) -> StudyReport:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[state_label(t)] = counts.get(state_label(t), 0) + 1
    write_trials_csv(study, study_dir / "trials.csv")
    try:
        best = study.best_trial
    except ValueError:
        raise MnistCnnError(f"no trial of study {study.study_name!r} completed (states: {counts}); "
                            f"see {study_dir / 'trials.csv'}") from None
    run_dir = Path(best.user_attrs["run_dir"])
    config = read_json(run_dir / "config.json")
    config["threads"] = 0  # the tuner's per-worker thread count says nothing about the recipe
    write_json(study_dir / "best-config.json", config)
    accuracy = test_accuracy(run_dir, dataset)
    write_json(study_dir / "best.json", {"trial": best.number, "run_dir": str(run_dir),
                                         "validation_accuracy": best.value, "test_accuracy": accuracy,
                                         "params": best.params, "trial_counts": counts})
    plots, skipped = write_plots(study, study_dir / "plots")
    files = {"trials": study_dir / "trials.csv", "best_config": study_dir / "best-config.json",
             "best": study_dir / "best.json", **plots}
    return StudyReport(study_dir, counts, best.number, best.value, dict(best.params), accuracy, files, skipped)


def format_report(r: StudyReport) -> str:
    counts = ", ".join(f"{n} {k.lower()}" for k, n in sorted(r.counts.items()))
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.best_params.items())
    lines = [f"Trials: {counts}.",
             f"Best trial {r.best_number}: validation accuracy {r.best_validation:.4f}; "
             f"test accuracy {r.test_accuracy:.4f} (measured once, after the search) [{params}]",
             f"Reproduce: mnist-cnn train --config {r.files['best_config']}",
             "Files: " + ", ".join(str(p) for p in r.files.values()),
             f"All trials in TensorBoard (HPARAMS tab): tensorboard --logdir {r.study_dir}"]
    if r.skipped_plots:
        lines.append("Plots not drawn: " + "; ".join(f"{k} ({v})" for k, v in r.skipped_plots.items()))
    return "\n".join(lines)
