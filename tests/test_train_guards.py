"""Training fails early and cleanly (issue 12 rows 1 and 7), and the `on_epoch_end` hook stops a run.

- A diverging run (--lr 1e10) stops at the first non-finite loss with one line naming the epoch
  and step and suggesting a lower --lr; run.json says failed; a good checkpoint is never
  overwritten with NaN weights; TensorBoard histograms survive non-finite weights.
- Flags that cannot work with the data set fail before a run directory exists, and a run that
  failed before its first checkpoint does not block its name.
"""
from __future__ import annotations

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mnist_cnn.train as train_module
from mnist_cnn import config as cfg
from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.cli import main
from mnist_cnn.fileio import read_json
from mnist_cnn.models import create_model
from mnist_cnn.runlog import RunLogger
from mnist_cnn.train import TrainingDiverged, train
from mnist_cnn.trainstate import make_optimizer
from synthetic import toy_dataset

QUIET = dict(print_fn=lambda s: None, progress=False)


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnist-cnn: error: ") and "Traceback" not in err, err
    return err


def test_diverging_run_stops_at_the_first_nan_in_one_line(tmp_path, monkeypatch, capsys, keep_threads):
    monkeypatch.setattr("mnist_cnn.data.load_dataset", lambda *a, **k: toy_dataset(1500))
    argv = ["train", "--lr", "1e10", "--train-subset", "1280", "--epochs", "1", "--threads", "1",
            "--out", str(tmp_path), "--name", "diverge", "--no-progress"]
    assert main(argv) == 1
    err = one_error_line(capsys)
    assert "training diverged at epoch 1, step " in err and "/10: the training loss is nan" in err, err
    assert "try a lower --lr (this run used 1e+10)" in err
    run = tmp_path / "diverge"
    assert read_json(run / "run.json")["status"] == "failed"
    assert not (run / "checkpoint.pt").exists()  # it diverged within the first epoch: nothing worth keeping
    # It failed before its first checkpoint, so the name is free again (not "already exists").
    assert main(argv) == 1
    assert "training diverged" in one_error_line(capsys)


def test_divergence_after_a_checkpoint_keeps_that_checkpoint(tmp_path, monkeypatch):
    """The loss turns NaN in epoch 2: epoch 1's checkpoint stays, with finite weights."""
    real_step, steps = train_module.train_step, []

    def nan_from_step_15(*args, **kwargs):
        loss, correct = real_step(*args, **kwargs)
        steps.append(1)
        return (loss * math.nan if len(steps) >= 15 else loss), correct

    monkeypatch.setattr(train_module, "train_step", nan_from_step_15)
    config = cfg.make_config("default", epochs=3, batch_size=50, threads=1)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3/12: the training loss is nan.*last good checkpoint is kept"):
        train(config, out_dir=tmp_path, name="run", dataset=toy_dataset(), **QUIET)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["global_step"] == 12
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert read_json(tmp_path / "run" / "run.json")["status"] == "failed"


def test_histograms_skip_non_finite_weights(tmp_path):
    model = create_model("seed")
    with torch.no_grad():
        model.fc1.weight.fill_(math.nan)           # all NaN: skipped
        model.fc2.weight[0, 0] = math.inf          # some inf: the finite rest is shown
    logger = RunLogger(tmp_path, print_fn=lambda s: None, progress=False)
    logger.histograms(model, 1)
    logger.close()
    events = EventAccumulator(str(tmp_path / "train"), size_guidance={"histograms": 0})
    events.Reload()
    tags = set(events.Tags()["histograms"])
    finite = {f"weights/{name}" for name, _ in model.named_parameters() if name != "fc1.weight"}
    assert tags == finite, "every finite parameter, and not the all-NaN fc1.weight"
    fc2 = events.Histograms("weights/fc2.weight")[0].histogram_value
    assert fc2.num == model.fc2.weight.numel() - 1, "the finite rest of fc2.weight, without its inf"
    rest = model.fc2.weight.detach().flatten()[1:]
    assert (fc2.min, fc2.max) == (pytest.approx(rest.min().item()), pytest.approx(rest.max().item()))
    assert fc2.sum == pytest.approx(rest.sum().item(), abs=1e-5)


@pytest.mark.parametrize("flags, code, message", [
    (["--batch-size", "10000000"], 2, "batch_size 10000000 is larger than the training set (55000 images)"),
    (["--validation-size", "60000"], 2, "validation size must be between 0 and 59999"),
    (["--train-subset", "5"], 2, "batch_size 128 is larger than the training set (5 images)"),
    (["--data-dir", "/nonexistent"], 2, "data dir /nonexistent does not exist"),
])
def test_bad_flags_fail_before_a_run_directory_exists(data_env, tmp_path, capsys, keep_threads, flags, code, message):
    argv = ["train", "--epochs", "1", "--threads", "1", "--out", str(tmp_path), "--name", "r", "--no-progress", *flags]
    for _ in range(2):  # the same name again: the same answer, never "already exists"
        assert main(argv) == code
        err = one_error_line(capsys)
        assert message in err and "already exists" not in err, err
        assert not (tmp_path / "r").exists()


def test_a_run_whose_data_cannot_be_obtained_does_not_block_its_name(data_env, tmp_path, capsys, keep_threads):
    """Loading happens in the run (its failure is recorded there); the name stays usable."""
    argv = ["train", "--epochs", "1", "--threads", "1", "--out", str(tmp_path), "--name", "r", "--no-progress"]
    for _ in range(2):
        assert main(argv) == 1
        err = one_error_line(capsys)
        assert "could not obtain the mnist data set" in err and "already exists" not in err, err
        assert read_json(tmp_path / "r" / "run.json")["status"] == "failed"


def test_on_epoch_end_can_stop_a_run(tmp_path):
    seen = []

    def stop_after_first(record):
        seen.append(record.epoch)
        return True

    result = train(cfg.make_config("default", epochs=3, batch_size=50, threads=1), out_dir=tmp_path, name="run",
                   dataset=toy_dataset(), on_epoch_end=stop_after_first, **QUIET)
    assert seen == [1] and result.stopped_early and len(result.history) == 1
    assert read_json(tmp_path / "run" / "run.json")["status"] == "stopped"
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["global_step"] == 12
    assert (tmp_path / "run" / "plots" / "curves.png").is_file()


def test_plain_sgd_without_momentum_trains():
    """--optimizer sgd --momentum 0 is plain SGD (torch refuses Nesterov without momentum)."""
    config = cfg.make_config("default", optimizer="sgd", momentum=0.0, lr=0.05, epochs=1, batch_size=50,
                             schedule="constant")
    model = create_model("seed")
    optimizer = make_optimizer(config, model)
    assert optimizer.param_groups[0]["nesterov"] is False and optimizer.param_groups[0]["momentum"] == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.rand(4, 1, 28, 28)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
