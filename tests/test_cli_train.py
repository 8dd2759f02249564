"""End to end through the CLI on real MNIST (a few hundred training images, one epoch)."""
import csv
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from mnist_cnn.cli import main
from mnist_cnn.tbexport import read_scalars


@pytest.fixture
def real_data(real_mnist_cache, monkeypatch):
    monkeypatch.setenv("MNIST_CNN_DATA", str(real_mnist_cache))
    monkeypatch.setenv("MNIST_CNN_MIRRORS", "")
    return real_mnist_cache


def test_train_evaluate_export_csv(real_data, tmp_path, capsys):
    args = ["train", "--preset", "seed", "--epochs", "2", "--train-subset", "1000", "--batch-size", "50", "--lr", "2e-3",
            "--out", str(tmp_path), "--name", "e2e", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # The lesson's start-up and epoch lines.
    assert "Size of:\n- Training-set:\t\t1000\n- Test-set:\t\t10000\n- Validation-set:\t5000\n" in out
    assert re.search(r"Epoch 2 completed : Time usage \d+ seconds\n\tAccuracy:\n"
                     r"\t- Training Accuracy:\t0\.\d+\n\t- Validation Accuracy:\t0\.\d+\n", out)
    run = tmp_path / "e2e"
    for name in ("run.json", "config.json", "environment.json", "checkpoint.pt", "metrics.csv"):
        assert (run / name).is_file(), name
    for png in ("curves.png", "samples.png"):
        with Image.open(run / "plots" / png) as im:
            im.verify()
    train_tags, val_tags = read_scalars(run / "train"), read_scalars(run / "validation")
    assert len(train_tags["loss"]) == len(train_tags["accuracy"]) == 2 * 20  # 1000 / 50 per epoch
    assert [s for _, s, _ in val_tags["accuracy"]] == [20, 40]
    # TensorBoard's own reader sees the model graph too.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "train"))
    acc.Reload()
    assert acc.Tags()["graph"]

    # A second run of the same name is refused rather than overwriting the first.
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"Accuracy:\s+([0-9.]+)", out).group(1))
    assert 0.5 < accuracy <= 1.0  # 40 steps on 1,000 images: far above chance (0.1)

    assert main(["export-csv", str(run)]) == 0
    written = capsys.readouterr().out.split()
    names = {os.path.basename(p) for p in written}
    assert names >= {"run-train-tag-accuracy.csv", "run-train-tag-loss.csv", "run-train-tag-lr.csv",
                     "run-validation-tag-accuracy.csv", "run-validation-tag-loss.csv"}
    rows = list(csv.reader(open(run / "csv" / "run-validation-tag-accuracy.csv")))
    assert rows[0] == ["Wall time", "Step", "Value"] and [r[1] for r in rows[1:]] == ["20", "40"]
    metrics = list(csv.DictReader(open(run / "metrics.csv")))
    assert float(rows[2][2]) == pytest.approx(float(metrics[1]["validation_accuracy"]), rel=1e-6)


def test_plain_lines_without_a_terminal(real_data, tmp_path):
    """In logs and CI (no TTY) only plain lines: no progress-bar carriage returns."""
    result = subprocess.run(
        [sys.executable, "-m", "mnist_cnn", "train", "--epochs", "1", "--train-subset", "256",
         "--out", str(tmp_path), "--name", "plain"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "MNIST_CNN_DATA": str(real_data)})
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    assert "Epoch 1 completed" in result.stdout and "Traceback" not in result.stderr
