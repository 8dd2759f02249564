"""`--budget MINUTES` and `--steps N`: the run's length from a wall-clock budget, and runs that
end on a step count (a partial last epoch).

The planning is tested with measurements fixed by monkeypatching (exact and deterministic); one
real run checks the clock with a loose bound, as this may run on a busy 2-core machine.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from mnist_cnn import budget, compilation
from mnist_cnn import config as cfg
from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.cli import main
from mnist_cnn.errors import UsageError
from mnist_cnn.runs import read_json
from mnist_cnn.train import TrainingInterrupted, train
from synthetic import toy_dataset

QUIET = dict(print_fn=lambda s: None, progress=False)
STEPS_PER_EPOCH = 12  # 600 toy images / batch 50
# A 50 ms step, a 10 ms validation pass and checkpoint, 0.5 s spent before planning: the steps
# dominate, so a plan may end inside an epoch.
MEASURED = budget.Measured(step_s=0.05, validation_s=0.01, checkpoint_s=0.01, spent_s=0.5)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy():
    return toy_dataset()


def small(**kw):
    return cfg.make_config("default", **{"batch_size": 50, "threads": 1, **kw})


def never_compiled() -> budget.CompiledStep:
    raise AssertionError("timed a compiled step for a run that cannot compile")


def compiled_step(step_s: float, spent_s: float = 25.0):
    """A fake `time_compiled` that counts its calls."""
    def timed() -> budget.CompiledStep:
        timed.calls += 1
        return budget.CompiledStep(step_s, spent_s)
    timed.calls = 0
    return timed


def fixed_costs(monkeypatch, measured: budget.Measured = MEASURED) -> None:
    monkeypatch.setattr("mnist_cnn.train._measure_costs", lambda *a, **k: measured)


def expected_steps(minutes: float, measured: budget.Measured = MEASURED, n_validation: int = 100,
                   checkpoint_every: int = 0) -> int:
    """The plan's rule written out plainly: the most steps whose run, every epoch's validation,
    logs and checkpoint and the fixed costs included, fits TARGET_FRACTION of the budget."""
    fixed = (measured.spent_s + budget.REPORT_S
             + measured.validation_s * min(1, budget.REPORT_IMAGES / n_validation))
    epoch_end = measured.validation_s + budget.EPOCH_LOG_S + measured.checkpoint_s
    target = 60 * minutes * budget.TARGET_FRACTION
    steps = 0
    while True:
        n = steps + 1
        periodic = n // checkpoint_every if checkpoint_every else 0
        if fixed + n * measured.step_s + math.ceil(n / STEPS_PER_EPOCH) * epoch_end \
                + periodic * measured.checkpoint_s > target:
            return steps
        steps = n


# ---------------------------------------------------------------- the plan, measurements fixed

@pytest.mark.parametrize("minutes,checkpoint_every", [(0.1, 0), (0.25, 0), (0.25, 5), (1.0, 7)])
def test_plan_takes_the_most_steps_that_fit(minutes, checkpoint_every):
    config = small(budget=minutes, checkpoint_every=checkpoint_every, compile="off")
    plan = budget.plan_budget(config, STEPS_PER_EPOCH, 100, CPU, MEASURED, never_compiled)
    assert plan.steps == expected_steps(minutes, checkpoint_every=checkpoint_every)
    assert plan.expected_s <= 60 * minutes * budget.TARGET_FRACTION
    assert plan.compile == "off"


def test_plan_with_compile_on_counts_the_compiled_step_timed_here(monkeypatch):
    monkeypatch.setattr(compilation, "compile_unavailable_reason", lambda device: None)
    measured = MEASURED._replace(step_s=0.01)
    eager = budget.plan_budget(small(model="resnet", budget=2.0, compile="off"), STEPS_PER_EPOCH, 100, CPU, measured,
                               never_compiled)
    timed = compiled_step(0.012)  # slower than eager: --compile on is obeyed all the same
    compiled = budget.plan_budget(small(model="resnet", budget=2.0, compile="on"), STEPS_PER_EPOCH, 100, CPU,
                                  measured, timed)
    assert compiled.compile == "on" and timed.calls == 1
    assert compiled.costs.step_s == pytest.approx(0.012) and compiled.compiled_step_s == pytest.approx(0.012)
    assert compiled.costs.fixed_s == pytest.approx(eager.costs.fixed_s + 25.0)
    assert compiled.steps < eager.steps
    assert compiled.expected_s <= 120 * budget.TARGET_FRACTION
    assert "12 ms compiled (compiling)" in compiled.summary() and "compiled" not in eager.summary()
    assert compiled.record()["compiled_step_seconds"] == pytest.approx(0.012)


@pytest.mark.parametrize("compiled_s, resolved", [(0.008, "on"), (0.0097, "off"), (0.011, "off")])
def test_auto_compiles_a_budget_run_only_when_its_compiled_step_is_faster_here(monkeypatch, compiled_s, resolved):
    """A network that compiling sped up elsewhere may not gain on this CPU: the plan times a
    compiled step and keeps eager unless it is MEASURED_GAIN faster; the compile time counts either way."""
    monkeypatch.setattr(compilation, "compile_unavailable_reason", lambda device: None)
    measured = MEASURED._replace(step_s=0.01)
    # 10 minutes of 10 ms steps: long enough that compiling could repay its cost (resolve_compile)
    eager = budget.plan_budget(small(model="resnet", budget=10.0, compile="off"), STEPS_PER_EPOCH, 100, CPU, measured,
                               never_compiled)
    timed = compiled_step(compiled_s)
    plan = budget.plan_budget(small(model="resnet", budget=10.0, compile="auto"), STEPS_PER_EPOCH, 100, CPU,
                              measured, timed)
    assert plan.compile == resolved and timed.calls == 1
    assert plan.costs.step_s == pytest.approx(compiled_s if resolved == "on" else 0.01)
    assert plan.costs.fixed_s == pytest.approx(eager.costs.fixed_s + 25.0)
    assert plan.expected_s <= 600 * budget.TARGET_FRACTION
    assert ("not faster here: eager" in plan.summary()) == (resolved == "off")


def test_auto_never_times_a_compiled_step_for_a_network_it_does_not_compile():
    plan = budget.plan_budget(small(model="best", budget=3.0, compile="auto"), STEPS_PER_EPOCH, 100, CPU,
                              MEASURED, never_compiled)
    assert plan.compile == "off" and plan.compiled_step_s is None


def test_a_budget_times_steps_for_2_percent_of_itself_at_most_20_seconds():
    assert budget.measuring_seconds(3) == pytest.approx(3.6)
    assert budget.measuring_seconds(15) == pytest.approx(18.0) and budget.measuring_seconds(30) == 20.0
    assert budget.measuring_seconds(0.1) == pytest.approx(0.12)  # tiny budgets: MEASURED_STEPS sets the floor


def test_plan_refuses_a_budget_shorter_than_one_epoch():
    slow = MEASURED._replace(step_s=1.0)  # 12 steps of 1 s + fixed costs > 6 s
    with pytest.raises(UsageError, match=r"too short for one epoch.*give at least 0\.3 min") as e:
        budget.plan_budget(small(budget=0.1), STEPS_PER_EPOCH, 100, CPU, slow, never_compiled)
    assert "\n" not in str(e.value)


def test_summary_is_one_line_saying_what_and_why():
    plan = budget.plan_budget(small(budget=0.5, compile="off"), STEPS_PER_EPOCH, 100, CPU, MEASURED, never_compiled)
    line = plan.summary()
    assert "\n" not in line
    assert line.startswith("budget 0.5 min: 50 ms/step measured")
    assert f"-> {plan.steps:,d} steps" in line and f"epochs of {STEPS_PER_EPOCH}" in line and "ending at ~" in line


# ---------------------------------------------------------------- the refusals

@pytest.mark.parametrize("values,message", [
    (dict(budget=-1.0), "budget must be a number of minutes from 0"),
    (dict(budget=float("nan")), "budget must be a number of minutes from 0"),
    (dict(budget=1e308), "budget must be a number of minutes from 0"),
    (dict(budget=2.0, steps=100), "both set the run's length"),
    (dict(steps=-1), "steps must be >= 0"),
])
def test_config_refuses_a_bad_budget_or_steps(values, message):
    with pytest.raises(UsageError, match=message):
        small(**values)


def test_budget_refused_for_the_lesson_preset():
    with pytest.raises(UsageError, match="preset seed"):
        cfg.make_config("seed", budget=5.0)


@pytest.mark.parametrize("argv,message", [
    (["--budget", "3", "--epochs", "4"], "give --budget or --epochs, not both"),
    (["--budget", "3", "--preset", "seed"], "preset seed"),
    (["--budget", "3", "--steps", "10"], "both set the run's length"),
])
def test_cli_refusals_are_one_line(argv, message, tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before any run directory


def test_lr_find_steps_are_its_sweeps_and_neither_it_nor_tune_takes_a_budget(capsys):
    from mnist_cnn.cli import build_parser, config_overrides

    parser = build_parser()
    args = parser.parse_args(["lr-find", "--steps", "10"])
    assert args.steps == 10 and "steps" not in config_overrides(args)
    assert "steps" in config_overrides(parser.parse_args(["train", "--steps", "10"]))
    for argv in (["lr-find", "--budget", "3"], ["tune", "--study", "s", "--trials", "1", "--budget", "3"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "unrecognized arguments: --budget" in capsys.readouterr().err


# ---------------------------------------------------------------- runs, measurements fixed

def fixed_cost_run(toy, out: Path, name: str, config: cfg.TrainConfig, print_fn=QUIET["print_fn"]):
    """A toy run trained with MEASURED as its measured costs (for module-scoped fixtures)."""
    with pytest.MonkeyPatch.context() as mp:
        fixed_costs(mp)
        return train(config, out_dir=out, name=name, dataset=toy, print_fn=print_fn, progress=False)


@pytest.fixture(scope="module")
def budget_run(toy, tmp_path_factory):
    """small(budget=0.12) with fixed costs, its printed lines and run directory (read-only)."""
    out, lines = tmp_path_factory.mktemp("budget"), []
    return fixed_cost_run(toy, out, "run", small(budget=0.12), lines.append), out / "run", lines


def test_budget_run_ends_on_the_planned_step_with_a_partial_last_epoch(budget_run):
    minutes = 0.12  # 79 steps: 6 whole epochs of 12 and a last one of 7
    steps = expected_steps(minutes)
    assert steps % STEPS_PER_EPOCH, "the case needs a partial last epoch"
    result, run, lines = budget_run
    config = read_json(run / "config.json")
    assert (config["steps"], config["budget"], config["epochs"]) == (steps, 0.0, math.ceil(steps / STEPS_PER_EPOCH))
    assert read_json(run / "environment.json")["budget"]["minutes"] == minutes
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["global_step"] == steps and checkpoint["config"]["steps"] == steps
    assert len(result.history) == config["epochs"]
    assert read_json(run / "run.json")["status"] == "complete"
    assert [line for line in lines if line.startswith("budget ")] == [
        line for line in lines if f"-> {steps:,d} steps" in line]
    # The last epoch's training metrics average its own 7 steps, not the 5 left unused.
    assert math.isfinite(result.history[-1].train_loss) and 0 < result.history[-1].train_accuracy <= 1


def test_resolved_config_reproduces_the_budget_run_bit_for_bit(budget_run, toy, tmp_path, monkeypatch):
    first, first_dir, _ = budget_run
    monkeypatch.setattr("mnist_cnn.train._measure_costs", _never_measures)
    again = train(cfg.config_from_file(first_dir / "config.json"), out_dir=tmp_path, name="again",
                  dataset=toy, **QUIET)
    assert read_json(tmp_path / "again" / "config.json") == read_json(first_dir / "config.json")
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def _never_measures(*args, **kwargs):
    raise AssertionError("a resolved config must not measure again")


@pytest.fixture(scope="module")
def uninterrupted_budget_run(toy, tmp_path_factory):
    """The run each interrupted-and-resumed one must equal (read-only)."""
    return fixed_cost_run(toy, tmp_path_factory.mktemp("full"), "full", small(budget=0.12, checkpoint_every=5))


@pytest.mark.parametrize("stop_at", [30, 74])  # mid-epoch 3; inside the partial last epoch (73-76)
def test_resume_mid_run_continues_to_the_planned_steps(toy, uninterrupted_budget_run, tmp_path, monkeypatch, stop_at):
    fixed_costs(monkeypatch)
    config = small(budget=0.12, checkpoint_every=5)
    steps = expected_steps(0.12, checkpoint_every=5)
    full = uninterrupted_budget_run
    with pytest.raises(TrainingInterrupted):
        train(config, out_dir=tmp_path, name="cut", dataset=toy, stop_after_steps=stop_at, **QUIET)
    monkeypatch.setattr("mnist_cnn.train._measure_costs", _never_measures)
    resumed = train(resume=tmp_path / "cut", dataset=toy, **QUIET)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["global_step"] == steps
    assert read_json(tmp_path / "cut" / "environment.json")["budget"]["steps"] == steps  # kept by the resume
    assert [r.epoch for r in resumed.history] == [r.epoch for r in full.history]
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_explicit_steps_end_mid_epoch_and_record_their_epochs(toy, tmp_path):
    result = train(small(steps=30, epochs=9), out_dir=tmp_path, name="steps", dataset=toy, **QUIET)
    config = read_json(tmp_path / "steps" / "config.json")
    assert (config["steps"], config["epochs"]) == (30, 3)
    assert load_checkpoint(tmp_path / "steps" / "checkpoint.pt")["global_step"] == 30
    assert [r.epoch for r in result.history] == [1, 2, 3]


def test_the_schedule_spans_the_steps_and_ends_at_their_last(toy, tmp_path):
    """One-cycle's rate falls to its floor on the run's last step, not an epoch's."""
    result = train(small(steps=30, schedule="linear", warmup=0.2), out_dir=tmp_path, name="lin", dataset=toy, **QUIET)
    assert result.history[-1].lr == 0.0
    assert result.history[-2].lr > 0.0


# ---------------------------------------------------------------- the command line, measurements fixed

CLI_TOY = ["--batch-size", "50", "--threads", "1", "--no-progress"]


@pytest.fixture
def cli_toy(monkeypatch):
    """`mnist-cnn train` on the toy data, torch's thread count restored afterwards."""
    monkeypatch.setattr("mnist_cnn.data.load_dataset", lambda *a, **k: toy_dataset())
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cli_budget_run_then_its_config_json_repeats_it(cli_toy, tmp_path, monkeypatch, capsys):
    fixed_costs(monkeypatch)
    assert main(["train", "--out", str(tmp_path), "--name", "b", "--budget", "0.12", *CLI_TOY]) == 0
    out = capsys.readouterr().out
    assert f"-> {expected_steps(0.12):,d} steps" in out
    monkeypatch.setattr("mnist_cnn.train._measure_costs", _never_measures)
    assert main(["train", "--out", str(tmp_path), "--name", "again", "--config", str(tmp_path / "b" / "config.json"),
                 "--no-progress"]) == 0
    assert "budget " not in capsys.readouterr().out
    first, again = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("b", "again"))
    assert first["global_step"] == again["global_step"] == expected_steps(0.12)
    for key, value in first["model"].items():
        assert torch.equal(value, again["model"][key]), key


def test_cli_budget_too_short_is_one_line_and_leaves_the_name_free(cli_toy, tmp_path, monkeypatch, capsys):
    fixed_costs(monkeypatch, MEASURED._replace(step_s=1.0))
    argv = ["train", "--out", str(tmp_path), "--name", "short", "--budget", "0.1", *CLI_TOY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too short for one epoch" in err and "give at least 0.3 min" in err
    assert not (tmp_path / "short" / "checkpoint.pt").exists()
    fixed_costs(monkeypatch)
    assert main(argv) == 0  # the same name, no --force: nothing was saved under it


# ---------------------------------------------------------------- the clock, for real

@pytest.mark.alone  # a wall-clock bound: another worker's training would eat its budget
def test_a_real_budget_run_ends_near_its_budget(toy, tmp_path):
    minutes = 0.1  # 6 s; tiny epochs make the per-epoch costs count, which is the harder case
    lines: list[str] = []
    started = time.monotonic()
    train(small(budget=minutes), out_dir=tmp_path, name="real", dataset=toy, print_fn=lines.append, progress=False)
    took = time.monotonic() - started
    assert 0.5 * 60 * minutes <= took <= 1.5 * 60 * minutes + 2, (took, [l for l in lines if l.startswith("budget")])
    assert read_json(tmp_path / "real" / "config.json")["steps"] >= STEPS_PER_EPOCH
