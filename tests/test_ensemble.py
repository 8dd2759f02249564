"""`train --members K`: an ensemble trained into one run directory and used as one model by
every command (evaluate, predict, serve, export, show's refusal, compare, export-csv, the API),
resumed mid-member, and sized by --budget. Tiny synthetic data; bit-identity (resume, the
resolved config) is asserted on one machine, as everywhere in this suite."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from mnist_cnn import api, budget
from mnist_cnn import config as cfg
from mnist_cnn import evaluate as evaluate_module
from mnist_cnn.cli import main
from mnist_cnn.errors import CheckpointError, UsageError
from mnist_cnn.evaluate import evaluate
from mnist_cnn.export import export_onnx
from mnist_cnn.inference import load_classifier
from mnist_cnn.preprocess import preprocess
from mnist_cnn.runs import ENSEMBLE_REPORT, member_dir, read_json
from mnist_cnn.train import TrainingInterrupted, train
from synthetic import toy_dataset

QUIET = dict(print_fn=lambda s: None, progress=False)
STEPS = 12  # per member: 2 epochs of 300 toy images at batch 50


@pytest.fixture(scope="module")
def toy():
    return toy_dataset()


def small(**kw) -> cfg.TrainConfig:
    return cfg.make_config("default", **{"epochs": 2, "batch_size": 50, "train_subset": 300, "threads": 1,
                                         "members": 3, "seed": 7, **kw})


@pytest.fixture(scope="module")
def ensemble(toy, tmp_path_factory):
    """A finished ensemble of 3 (read-only: copy it before writing into it)."""
    return train(small(), out_dir=tmp_path_factory.mktemp("ens"), name="ens", dataset=toy, **QUIET)


@pytest.fixture
def toy_splits(toy, monkeypatch):
    """Commands that reload the run's data set get the toy data instead."""
    monkeypatch.setattr(evaluate_module, "load_split", lambda config, split, data_dir=None: getattr(toy, split))
    monkeypatch.setattr("mnist_cnn.export.load_split", lambda config, split, data_dir=None: getattr(toy, split))


def mean_probabilities(run, images):
    members = [load_classifier(member_dir(run, k), "cpu") for k in (1, 2, 3)]
    return torch.stack([m.probabilities(images).double() for m in members]).mean(0)


# ---------------------------------------------------------------- one directory, K members

def test_members_are_whole_runs_with_their_own_seeds(ensemble):
    run = ensemble.run_dir
    configs = [read_json(member_dir(run, k) / "config.json") for k in (1, 2, 3)]
    assert [c["seed"] for c in configs] == [21, 22, 23] and all(c["members"] == 1 for c in configs)  # 7 x 3 + k - 1
    assert all(read_json(member_dir(run, k) / "run.json")["status"] == "complete" for k in (1, 2, 3))
    top = read_json(run / "config.json")
    assert (top["members"], top["seed"], top["steps"], top["epochs"]) == (3, 7, 0, 2)
    assert read_json(run / "run.json")["status"] == "complete"
    assert read_json(run / "environment.json")["members"] == 3
    first, second = (load_classifier(member_dir(run, k), "cpu").model.state_dict() for k in (1, 2))
    assert any(not torch.equal(first[key], second[key]) for key in first)  # different inits and data orders
    assert ensemble.global_step == 3 * STEPS and len(ensemble.members) == 3


def test_the_run_is_one_model_averaging_its_members_probabilities(ensemble, toy):
    classifier = load_classifier(ensemble.run_dir, "cpu")
    assert len(classifier.members) == 3 and classifier.config["members"] == 3
    got = classifier.probabilities(toy.test.images).double()
    torch.testing.assert_close(got, mean_probabilities(ensemble.run_dir, toy.test.images), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(len(got), dtype=torch.double), atol=1e-5, rtol=0)
    with torch.inference_mode():  # train's result is the same model
        again = torch.softmax(ensemble.model(toy.test.images.float() / 255), 1).double()
    torch.testing.assert_close(again, got, atol=1e-6, rtol=0)


def test_evaluate_scores_the_ensemble_and_each_member(ensemble, toy):
    result = evaluate(ensemble.run_dir, "test", dataset=toy)
    probs = mean_probabilities(ensemble.run_dir, toy.test.images)
    assert math.isclose(result.accuracy, (probs.argmax(1) == toy.test.labels).double().mean().item())
    assert [m.source for m in result.members] == [str(member_dir(ensemble.run_dir, k)) for k in (1, 2, 3)]
    alone = [evaluate(member_dir(ensemble.run_dir, k), "test", dataset=toy).accuracy for k in (1, 2, 3)]
    assert [m.accuracy for m in result.members] == pytest.approx(alone)
    report = read_json(ensemble.run_dir / ENSEMBLE_REPORT)
    validation = evaluate(ensemble.run_dir, "validation", dataset=toy)
    assert report["validation_accuracy"] == pytest.approx(validation.accuracy)
    assert [m["accuracy"] for m in report["members"]] == pytest.approx([m.accuracy for m in validation.members])


def test_api_loads_classifies_and_evaluates_the_run_as_one_model(ensemble, toy):
    classifier = api.load_run(ensemble.run_dir)
    predictions = api.classify(classifier, toy.test.images[:20])
    want = mean_probabilities(ensemble.run_dir, toy.test.images[:20])
    assert list(predictions.labels) == want.argmax(1).tolist()
    assert api.evaluate_model(ensemble, dataset=toy).accuracy == evaluate(ensemble.run_dir, dataset=toy).accuracy


def test_onnx_export_is_one_graph_averaging_softmax(ensemble, toy, toy_splits, tmp_path):
    run = tmp_path / "ens"
    shutil.copytree(ensemble.run_dir, run)
    report = export_onnx(run, tmp_path / "ens.onnx")
    assert report.argmax_mismatches == 0 and report.images_checked == len(toy.test)
    onnx_model = load_classifier(tmp_path / "ens.onnx")
    assert onnx_model.config["members"] == 3
    torch.testing.assert_close(onnx_model.probabilities(toy.test.images).double(),
                               mean_probabilities(run, toy.test.images), atol=1e-5, rtol=0)


def test_serve_predictor_answers_with_the_ensemble(ensemble, toy):
    from mnist_cnn.serve.predictor import Predictor

    predictor = Predictor(ensemble.run_dir, "cpu")
    got = np.array(predictor.probabilities(toy.test.images[:32]))
    want = mean_probabilities(ensemble.run_dir, toy.test.images[:32]).numpy()
    assert np.array_equal(got.argmax(1), want.argmax(1)) and np.abs(got - want).max() < 1e-5


# ---------------------------------------------------------------- resume, budget, the resolved config

def test_resume_mid_member_continues_that_member_and_ends_as_if_never_stopped(ensemble, toy, tmp_path):
    stop_at = STEPS + 5  # inside member 2's first epoch
    with pytest.raises(TrainingInterrupted) as stopped:
        train(small(), out_dir=tmp_path, name="cut", dataset=toy, stop_after_steps=stop_at, **QUIET)
    cut = tmp_path / "cut"
    assert f"of member 2 of 3" in str(stopped.value) and f"--resume {cut}" in str(stopped.value)
    assert read_json(cut / "run.json")["status"] == "interrupted"
    assert read_json(member_dir(cut, 1) / "run.json")["status"] == "complete"
    assert not member_dir(cut, 3).exists()
    lines: list[str] = []
    resumed = train(resume=cut, dataset=toy, print_fn=lines.append, progress=False)
    assert any("continuing member 2 of 3" in line for line in lines)
    assert resumed.global_step == 3 * STEPS and read_json(cut / "run.json")["status"] == "complete"
    for k in (1, 2, 3):
        want = load_classifier(member_dir(ensemble.run_dir, k), "cpu").model.state_dict()
        got = load_classifier(member_dir(cut, k), "cpu").model.state_dict()
        assert all(torch.equal(want[key], got[key]) for key in want), f"member {k}"
    with pytest.raises(UsageError, match="already finished all its members"):
        train(resume=cut, dataset=toy, **QUIET)


MEASURED = budget.Measured(step_s=0.05, validation_s=0.01, checkpoint_s=0.01, spent_s=0.5)


def test_budget_splits_between_members_and_config_json_repeats_the_ensemble(toy, tmp_path, monkeypatch):
    monkeypatch.setattr("mnist_cnn.train._measure_costs", lambda *a, **k: MEASURED)
    result = train(small(budget=0.16, members=2), out_dir=tmp_path, name="b", dataset=toy, **QUIET)
    member_plan = read_json(member_dir(tmp_path / "b", 1) / "environment.json")["budget"]
    assert member_plan["minutes"] == pytest.approx(0.08)  # half the budget each
    steps = member_plan["steps"]
    assert steps > STEPS  # the budget, not the preset's 2 epochs, set the length
    top = read_json(tmp_path / "b" / "config.json")
    assert (top["budget"], top["steps"], top["epochs"], top["members"]) == (0.0, steps, math.ceil(steps / 6), 2)
    assert read_json(tmp_path / "b" / "environment.json")["budget"] == {"minutes": 0.16,
                                                                       "member_minutes": pytest.approx(0.08)}
    assert [read_json(member_dir(tmp_path / "b", k) / "config.json")["steps"] for k in (1, 2)] == [steps] * 2
    assert result.global_step == 2 * steps

    def never(*a, **k):
        raise AssertionError("a resolved config must not measure again")

    monkeypatch.setattr("mnist_cnn.train._measure_costs", never)
    again = train(cfg.config_from_file(tmp_path / "b" / "config.json"), out_dir=tmp_path, name="again",
                  dataset=toy, **QUIET)
    for first, second in zip(result.members, again.members):
        state, other = first.model.state_dict(), second.model.state_dict()
        assert all(torch.equal(state[key], other[key]) for key in state)


def test_a_failed_ensemble_with_a_finished_member_keeps_its_name(toy, tmp_path, monkeypatch):
    """A member's checkpoint is work to keep: the name is not reused without --force."""
    calls = []
    real = train.__globals__["_train_one"]

    def second_member_fails(config, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise UsageError("simulated failure in member 2")
        return real(config, **kw)

    monkeypatch.setattr("mnist_cnn.train._train_one", second_member_fails)
    with pytest.raises(UsageError, match="simulated"):
        train(small(members=2), out_dir=tmp_path, name="f", dataset=toy, **QUIET)
    assert read_json(tmp_path / "f" / "run.json")["status"] == "failed"
    with pytest.raises(UsageError, match="already exists"):
        train(small(members=2), out_dir=tmp_path, name="f", dataset=toy, **QUIET)


def test_an_ensemble_with_no_member_trained_is_one_line(toy, tmp_path):
    run = tmp_path / "empty"
    (run / "members").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict(small())))
    with pytest.raises(CheckpointError, match="no member trained yet.*--resume"):
        load_classifier(run, "cpu")
    (run / "config.json").write_text(json.dumps({**cfg.to_dict(small()), "members": 10**9}))
    with pytest.raises(CheckpointError, match="members must be from 1 to 64"):
        load_classifier(run, "cpu")


def test_ensembles_of_consecutive_seeds_share_no_member_seed():
    seeds = [[cfg.member_seed(cfg.make_config("default", seed=s, members=k), m) for m in range(1, k + 1)]
             for k in (1, 2, 3) for s in (0, 1, 2)]
    assert seeds[:3] == [[0], [1], [2]]                      # one member: the seed itself
    assert seeds[3:6] == [[0, 1], [2, 3], [4, 5]]
    assert seeds[6:] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize("values,message", [
    (dict(members=0), "members must be from 1 to 64, not 0"),
    (dict(members=65), "members must be from 1 to 64, not 65"),
    (dict(members=2, seed=2**31), "runs past 4294967295"),
])
def test_config_refuses_bad_member_counts(values, message):
    with pytest.raises(UsageError, match=message):
        cfg.make_config("default", **values)


def test_torchrun_is_refused_in_one_line(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UsageError, match="one after another in one process"):
        train(small(), out_dir=tmp_path, name="ddp", dataset=toy, **QUIET)
    assert not (tmp_path / "ddp").exists()


# ---------------------------------------------------------------- the command line

@pytest.fixture
def cli_toy(toy, toy_splits, monkeypatch):
    monkeypatch.setattr("mnist_cnn.data.load_dataset", lambda *a, **k: toy)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cli_trains_evaluates_predicts_and_compares_an_ensemble(cli_toy, tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path), "--name", "e", "--members", "2", "--epochs", "1", "--batch-size", "50",
            "--train-subset", "300", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "member 1 of 2 (seed 0)" in out and "member 2 of 2 (seed 1)" in out and "Ensemble of 2: validation" in out
    run = tmp_path / "e"
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "Ensemble of 2" in out and str(member_dir(run, 2)) in out
    assert read_json(run / "evaluation" / "test.json")["accuracy"] == evaluate(run, "test").accuracy
    image = tmp_path / "digit.png"
    from PIL import Image
    Image.fromarray(np.asarray(cli_toy_image())).save(image)
    assert main(["predict", str(run), str(image), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    want = load_classifier(run, "cpu").probabilities(preprocess(image).image[None])[0]  # what predict feeds it
    assert top[0] == {"class": str(int(want.argmax())), "probability": pytest.approx(float(want.max()), abs=1e-5)}
    assert main(["compare", str(run), str(member_dir(run, 1)), "--plot", str(tmp_path / "compare.png")]) == 0
    out = capsys.readouterr().out
    assert "2 x default" in out or "2 x seed" in out
    assert main(["export-csv", str(run), "--out", str(tmp_path / "csv")]) == 0
    written = capsys.readouterr().out
    assert "run-members-1-train-tag-loss.csv" in written and "run-members-2-validation-tag-accuracy.csv" in written
    assert main(["show", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"show {member_dir(run, 1)}" in err


def test_compare_plots_each_member_as_its_own_line_in_its_runs_colour(ensemble, tmp_path):
    from mnist_cnn.compare import summarize_run
    from mnist_cnn.plots import plot_comparison
    single = summarize_run(member_dir(ensemble.run_dir, 1))
    runs = [(s.name, s.history) for s in (summarize_run(ensemble.run_dir), single)]
    figure = plot_comparison(runs, tmp_path / "compare.png")
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["ens, member 1", "ens, member 2", "ens, member 3", "1"]
    assert all(list(line.get_xdata()) == [1, 2] for line in lines)  # each member's epochs, no jump back to 1
    assert len({line.get_color() for line in lines[:3]}) == 1 and lines[3].get_color() != lines[0].get_color()
    assert (tmp_path / "compare.png").stat().st_size > 0


def cli_toy_image() -> np.ndarray:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:11, 4:18] = 255
    return image


@pytest.mark.parametrize("command", ["tune", "lr-find"])
def test_members_is_a_train_flag_only(command, capsys):
    argv = [command, "--members", "2"] + (["--study", "x", "--trials", "1"] if command == "tune" else [])
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "unrecognized arguments: --members" in capsys.readouterr().err


# ---------------------------------------------------------------- the preset

def test_best_ensemble_preset_is_two_best_networks_in_30_minutes_unless_a_length_is_given():
    preset = cfg.make_config("best-ensemble")
    best = cfg.make_config("best")
    assert (preset.members, preset.budget, preset.model, preset.augment) == (2, 30.0, best.model, best.augment)
    assert cfg.make_config("best-ensemble", epochs=3).budget == 0.0   # a length given outright wins
    assert cfg.make_config("best-ensemble", steps=50).budget == 0.0
    assert cfg.make_config("best-ensemble", budget=10).budget == 10.0


def test_tune_refuses_a_preset_that_trains_an_ensemble_to_a_budget(tmp_path):
    from mnist_cnn.tune.study import prepare

    with pytest.raises(UsageError, match="tune searches single networks"):
        prepare(cfg.TuneSettings(study="x", trials=1, preset="best-ensemble", out_dir=str(tmp_path)))


def test_a_budget_too_short_names_the_whole_budget_and_its_split(toy, tmp_path, monkeypatch):
    monkeypatch.setattr("mnist_cnn.train._measure_costs", lambda *a, **k: MEASURED._replace(step_s=1.0))
    with pytest.raises(UsageError) as refused:
        train(small(budget=0.2, members=2), out_dir=tmp_path, name="short", dataset=toy, **QUIET)
    message = str(refused.value)
    assert message.startswith("--budget 0.2 min (0.1 min for each of 2 members) is too short for one epoch here")
    assert "give at least 0.4 min" in message and "\n" not in message
