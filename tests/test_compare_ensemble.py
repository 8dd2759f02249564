"""`compare` (runs side by side) and ensembles / test-time augmentation, on tiny synthetic runs."""
import json
import math

import pytest
import torch

from mnist_cnn import config as cfg
from mnist_cnn import evaluate as evaluate_module
from mnist_cnn.cli import main
from mnist_cnn.compare import compare_runs, format_table
from mnist_cnn.data import Dataset
from mnist_cnn.errors import UsageError
from mnist_cnn.inference import loss_and_accuracy, load_classifier, predict_logits
from mnist_cnn.train import train
from synthetic import toy_dataset

QUIET = dict(print_fn=lambda s: None, progress=False)
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.fixture(scope="module")
def toy():
    return toy_dataset()


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    """Two seeds of a small recipe, and one run whose data set has other class names."""
    out = tmp_path_factory.mktemp("runs")
    small = dict(epochs=2, batch_size=50, train_subset=300)
    for seed in (0, 1):
        train(cfg.make_config("default", seed=seed, **small), out_dir=out, name=f"s{seed}", dataset=toy, **QUIET)
    fashion = Dataset("toy-fashion", FASHION, toy.train, toy.validation, toy.test, "synthetic")
    train(cfg.make_config("default", dataset="fashion-mnist", epochs=1, batch_size=50, train_subset=300),
          out_dir=out, name="fashion", dataset=fashion, **QUIET)
    return out


@pytest.fixture
def toy_test_split(toy, monkeypatch):
    """evaluate's data: the toy test split instead of a real data set."""
    monkeypatch.setattr(evaluate_module, "load_split", lambda config, split, data_dir=None: toy.test)


def test_ensemble_averages_probabilities(runs, toy, toy_test_split):
    result = evaluate_module.evaluate([runs / "s0", runs / "s1"], device="cpu")
    models = [load_classifier(runs / f"s{s}", "cpu").model for s in (0, 1)]
    probs = sum(torch.softmax(predict_logits(m, toy.test.images).double(), 1) for m in models) / 2
    assert math.isclose(result.accuracy, (probs.argmax(1) == toy.test.labels).double().mean().item())
    nll = -probs.log()[torch.arange(len(toy.test)), toy.test.labels].mean().item()
    assert math.isclose(result.loss, nll, rel_tol=1e-6)
    for member, model in zip(result.members, models):
        assert math.isclose(member.accuracy, loss_and_accuracy(model, toy.test.images, toy.test.labels)[1], rel_tol=1e-6)
    assert "ensemble" in evaluate_module.format_members(result)
    assert result.images == len(toy.test)


def test_tta_averages_the_shifted_views(runs, toy):
    classifier = __import__("mnist_cnn.inference", fromlist=["x"]).load_classifier(runs / "s0", "cpu")
    images = toy.test.images[:9]
    views = [images, torch.roll(images, -1, 2), torch.roll(images, 1, 2), torch.roll(images, -1, 3), torch.roll(images, 1, 3)]
    # Zero fill instead of wrap-around: clear the row/column that rolled in.
    views[1][..., -1, :] = 0
    views[2][..., 0, :] = 0
    views[3][..., :, -1] = 0
    views[4][..., :, 0] = 0
    expected = sum(torch.softmax(classifier.logits(v).double(), 1) for v in views) / 5
    assert torch.allclose(evaluate_module.classifier_log_probs(classifier, images, tta=True).exp(), expected, atol=1e-9)


def test_ensemble_refuses_runs_with_different_classes(runs, toy_test_split):
    with pytest.raises(UsageError, match="same classes"):
        evaluate_module.evaluate([runs / "s0", runs / "fashion"], device="cpu")


def test_compare_table_json_and_plot(runs, tmp_path, capsys):
    (runs / "s1" / "evaluation").mkdir(exist_ok=True)
    (runs / "s1" / "evaluation" / "test.json").write_text(json.dumps({"accuracy": 0.9876}))
    rows = compare_runs([runs / "s0", runs / "s1", runs / "fashion"])
    s0 = rows[0]
    assert (s0.model, s0.preset, s0.dataset, s0.parameters, s0.epochs_done, s0.epochs) == \
        ("seed", "default", "mnist", 104_342, 2, 2)
    assert s0.best_validation_accuracy == max(r.validation_accuracy for r in s0.history)
    assert s0.final_validation_accuracy == s0.history[-1].validation_accuracy
    assert s0.test_accuracy is None and rows[1].test_accuracy == 0.9876
    assert rows[2].dataset == "fashion-mnist" and rows[2].status == "complete"
    table = format_table(rows)
    assert len(table.splitlines()) == 2 + 3 and "98.76%" in table

    png = tmp_path / "cmp.png"
    assert main(["compare", str(runs / "s0"), str(runs / "s1"), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "s0" in out and "s1" in out and f"tensorboard --logdir {runs.resolve()}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", str(runs / "s0"), "--json", "--no-plot"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["parameters"] == 104_342


def test_compare_of_a_non_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an mnist-cnn run directory" in err


def test_class_names_reach_the_checkpoint_and_compare(runs):
    assert load_classifier(runs / "fashion", "cpu").class_names == FASHION


def test_evaluate_command_with_several_runs_is_an_ensemble(runs, toy_test_split, tmp_path, capsys):
    expected = evaluate_module.evaluate([runs / "s0", runs / "s1"], device="cpu").accuracy
    assert main(["evaluate", str(runs / "s0"), str(runs / "s1"), "--out", str(tmp_path / "ens")]) == 0
    out = capsys.readouterr().out
    assert "Ensemble of 2" in out and f"accuracy {expected:.4f}" in out
    assert json.loads((tmp_path / "ens" / "test.json").read_text())["accuracy"] == expected
    assert main(["evaluate", str(runs / "s0"), "--tta", "--json"]) == 0  # one run + TTA: same path
    report = json.loads(capsys.readouterr().out)
    assert report["tta"] is True and len(report["members"]) == 1
