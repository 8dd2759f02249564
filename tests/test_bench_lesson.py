"""bench/lesson/run.py (make bench-lesson) without TensorFlow: arguments, summary, table, failures.

The TF programs themselves run only under .venv-lesson; the project's tests never need TensorFlow.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("bench_lesson_run", ROOT / "bench" / "lesson" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(driver):
    args = driver.parse_args([])
    assert (args.epochs, args.rounds, args.threads) == (3, 2, [2])
    assert args.programs == ["lesson_tf1", "keras_fit", "mnist_cnn"]
    args = driver.parse_args(["--epochs", "1", "--threads", "2,1", "--programs", "keras_fit,mnist_cnn"])
    assert (args.epochs, args.threads, args.programs) == (1, [2, 1], ["keras_fit", "mnist_cnn"])


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--threads", "two"], ["--epochs", "1,2"],
                                  ["--rounds", "0"], ["--programs", "pytorch"]])
def test_bad_arguments_exit_2(driver, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        driver.parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def _run(*seconds, accuracy=0.9):
    return {"epochs": [{"epoch": i + 1, "seconds": s, "train_accuracy": 0.8, "validation_accuracy": accuracy}
                       for i, s in enumerate(seconds)]}


def test_summary_ratios_and_table(driver):
    runs = {"lesson_tf1": [_run(9.0, 4.0, 5.0), _run(6.0, 4.5, 4.0)],
            "keras_fit": [_run(8.0, 3.0, 3.5), _run(3.0, 2.5, 3.0)],
            "mnist_cnn": [_run(3.0, 2.0, 2.5), _run(2.0, 2.0, 2.5, accuracy=0.91)]}
    summary = driver.summarize(runs)
    assert summary["lesson_tf1"]["epoch_seconds"] == {"median": 4.75, "min": 4.0, "max": 9.0, "n": 6}
    assert summary["lesson_tf1"]["epoch_seconds_after_first"] == {"median": 4.25, "min": 4.0, "max": 5.0, "n": 4}
    assert summary["mnist_cnn"]["last_validation_accuracy"] == [0.9, 0.91]
    assert summary["ratio_lesson_tf1_to_mnist_cnn"] == pytest.approx(4.75 / 2.25)
    assert summary["ratio_keras_fit_to_mnist_cnn"] == pytest.approx(3.0 / 2.25)
    table = driver.format_table({"results": {"2": summary}})
    assert "mnist-cnn train --preset seed" in table
    assert "2.11x" in table and "1.33x" in table


def test_summary_without_mnist_cnn_has_no_ratio(driver):
    summary = driver.summarize({"keras_fit": [_run(3.0)]})
    assert summary["keras_fit"]["epoch_seconds_after_first"] is None
    assert not [key for key in summary if key.startswith("ratio")]
    assert "ratio" not in driver.format_table({"results": {"1": summary}})


def test_epoch_lines_skip_other_output(driver):
    stdout = 'Epoch noise\n{"jit_compile": false}\n{"epoch": 1, "seconds": 2.5, "validation_accuracy": 0.9}\n'
    assert driver.epoch_lines(stdout) == [{"epoch": 1, "seconds": 2.5, "validation_accuracy": 0.9}]


def test_missing_lesson_venv_is_one_line(driver, tmp_path, capsys):
    rc = driver.main(["--lesson-venv", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "make bench-lesson" in err
    assert not (tmp_path / "r.json").exists()


def test_partial_report_is_saved_after_each_run(driver, tmp_path):
    out = tmp_path / "results" / "lesson.json"
    report = {"machine": {"host": "h"}}
    runs = {2: {"lesson_tf1": [_run(5.0, 4.0)], "keras_fit": [], "mnist_cnn": []}}
    driver.save(report, runs, out, complete=False)
    saved = json.loads(out.read_text())
    assert saved["complete"] is False
    assert saved["runs"]["2"]["lesson_tf1"][0]["epochs"][1]["seconds"] == 4.0
    assert list(saved["results"]["2"]) == ["lesson_tf1"]
    assert [p.name for p in out.parent.iterdir()] == ["lesson.json"]
