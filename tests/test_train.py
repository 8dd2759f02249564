"""The training loop on synthetic data: learning, determinism, outputs, resume."""
import csv
import math

import pytest
import torch

from mnist_cnn import config as cfg
from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.models import create_model
from mnist_cnn.runs import read_json
from mnist_cnn.tbexport import read_scalars
from mnist_cnn.inference import loss_and_accuracy, to_input
from mnist_cnn.train import TrainingInterrupted, train, train_step
from synthetic import toy_dataset

QUIET = dict(print_fn=lambda s: None, progress=False)


@pytest.fixture(scope="module")
def toy():
    return toy_dataset()


def small(**kw):
    return cfg.make_config("default", **{"epochs": 2, "batch_size": 50, **kw})


def test_seed_net_overfits_a_tiny_batch(toy):
    torch.manual_seed(0)
    model = create_model("seed")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = to_input(toy.train.images[:20], True), toy.train.labels[:20]
    for _ in range(150):
        loss, correct = train_step(model, optimizer, x, y)
    assert int(correct) == 20 and float(loss) < 0.05


def test_training_learns_and_writes_every_output(toy, tmp_path):
    result = train(small(), out_dir=tmp_path, name="run", dataset=toy, **QUIET)
    run = tmp_path / "run"
    assert result.history[-1].validation_accuracy > 0.9
    assert read_json(run / "run.json")["status"] == "complete"
    # The config as given, with the precision and compile policies resolved for this machine.
    resolved = {"amp": result.config.amp, "compile": result.config.compile}
    assert resolved["amp"] in ("off", "bf16") and resolved["compile"] == "off"
    assert read_json(run / "config.json") == {**cfg.to_dict(small()), **resolved}
    assert {"torch", "device", "seed", "python"} <= set(read_json(run / "environment.json"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "seconds", "lr", "train_loss", "train_accuracy", "validation_loss", "validation_accuracy"}
    steps = 600 // 50
    train_scalars = read_scalars(run / "train")
    assert [s for _, s, _ in train_scalars["loss"]] == list(range(1, 2 * steps + 1))  # per batch
    val = read_scalars(run / "validation")
    assert [s for _, s, _ in val["accuracy"]] == [steps, 2 * steps]  # per epoch, same step axis
    assert math.isclose(val["accuracy"][-1][2], float(rows[-1]["validation_accuracy"]), rel_tol=1e-6)
    for png in ("curves.png", "samples.png"):
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 2 and state["config"]["model"] == "seed"


def test_same_seed_same_weights_and_different_seed_differs(toy, tmp_path):
    # Determinism on one machine (same CPU, same threads); no figure from another machine.
    a = train(small(epochs=1), out_dir=tmp_path, name="a", dataset=toy, **QUIET).model.state_dict()
    b = train(small(epochs=1), out_dir=tmp_path, name="b", dataset=toy, **QUIET).model.state_dict()
    c = train(small(epochs=1, seed=1), out_dir=tmp_path, name="c", dataset=toy, **QUIET).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def interrupt_config():
    return small(epochs=3, checkpoint_every=4)


@pytest.fixture(scope="module")
def uninterrupted(toy, tmp_path_factory):
    """The uninterrupted run each interrupted-and-resumed one must equal (read-only, once per module)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    return train(interrupt_config(), out_dir=out, name="full", dataset=toy, **QUIET), out / "full"


@pytest.mark.parametrize("stop_at", [5, 12, 17])  # mid-epoch, at an epoch end, mid-epoch 2
def test_interrupted_then_resumed_is_bit_identical(toy, uninterrupted, tmp_path, stop_at):
    # Bit-identity on one machine: both runs are made here, on this CPU, with the same threads.
    full, full_dir = uninterrupted
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(interrupt_config(), out_dir=tmp_path, name="cut", dataset=toy, stop_after_steps=stop_at, **QUIET)
    assert read_json(tmp_path / "cut" / "run.json")["status"] == "interrupted"
    resumed = train(resume=tmp_path / "cut", dataset=toy, **QUIET)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert (full_dir / "metrics.csv").read_text().splitlines()[1:][0].split(",")[2:] == \
        (tmp_path / "cut" / "metrics.csv").read_text().splitlines()[1:][0].split(",")[2:]
    for writer in ("train", "validation"):
        a, b = read_scalars(full_dir / writer), read_scalars(tmp_path / "cut" / writer)
        for tag in ("loss", "accuracy"):
            assert [(s, v) for _, s, v in a[tag]] == [(s, v) for _, s, v in b[tag]], (writer, tag)


def test_evaluate_matches_manual_count(toy):
    model = create_model("seed")
    loss, acc = loss_and_accuracy(model, toy.test.images, toy.test.labels, batch_size=7)
    logits = model(to_input(toy.test.images, False))
    assert math.isclose(acc, (logits.argmax(1) == toy.test.labels).float().mean().item(), rel_tol=1e-6)
    assert math.isclose(loss, torch.nn.functional.cross_entropy(logits, toy.test.labels).item(), rel_tol=1e-4)


def test_train_subset_and_batch_too_large(toy, tmp_path):
    r = train(small(epochs=1, train_subset=100), out_dir=tmp_path, name="sub", dataset=toy, **QUIET)
    assert len(read_scalars(tmp_path / "sub" / "train")["loss"]) == 2
    from mnist_cnn.errors import UsageError
    with pytest.raises(UsageError, match="larger than the training set"):
        train(small(batch_size=5000), out_dir=tmp_path, name="big", dataset=toy, **QUIET)
    assert r.history
