"""`mnist-cnn tune`, `lr-find` and `train --config` on tiny synthetic data: a pruned study end to
end with its files, best-config.json reproducing its trial, kill -9 of the tuner and resume,
and two tune processes sharing one PostgreSQL study (a real server: $MNIST_CNN_TEST_PG, or a
throwaway cluster started by .ci/postgres.sh; under CI=true a missing server fails)."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthetic import toy_dataset

from mnist_cnn import config as cfg
from mnist_cnn.cli import main
from mnist_cnn.train import train

optuna = pytest.importorskip("optuna") if os.environ.get("CI") != "true" else __import__("optuna")

from mnist_cnn.tune import TuneSettings, tune  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "tune_driver.py"
# 200 toy images, batch 20: 10 steps an epoch of the small batch-norm `fast` net (it learns the toy
# classes in one epoch); most of a trial's seconds are run-directory bookkeeping (plots, TensorBoard).
TINY = dict(model="fast", epochs=2, batch_size=20, threads=1)
TINY_FLAGS = ["--model", "fast", "--epochs", "2", "--batch-size", "20", "--threads", "1"]


def tiny_data():
    return toy_dataset(n_train=200, n_validation=100, n_test=100)


def write_space(path: Path) -> Path:
    # lr 1e-7 cannot learn in 20 steps: such a trial lags the median after epoch 1 and is pruned.
    path.write_text('lr = [3e-3, 1e-7]\n[label_smoothing]\nlow = 0.0\nhigh = 0.1\n')
    return path


# ------------------------------------------------------------------ refusals, no training
@pytest.mark.parametrize("space, flags, message", [
    ('[dropout]\nlow = 0.1\nhigh = 0.5\n', [], "not a config field"),
    ('[lr]\nlow = 1e-4\nhigh = 1e-2\n', ["--lr", "0.01"], "fixed on the command line"),
    ('[warmup]\nlow = 0.1\nhigh = 1.5\n', [], "warmup must be a fraction"),
    ('[lr\n', [], "not valid TOML"),
    ('[lr]\nlow = 1e-2\nhigh = 1e-4\n', [], "low < high"),
    ('augment = "affine"\n', [], "list of choices"),
])
def test_bad_space_is_one_line_exit_2(tmp_path, capsys, space, flags, message):
    (tmp_path / "space.toml").write_text(space)
    code = main(["tune", "--study", "s", "--trials", "2", "--space", str(tmp_path / "space.toml"),
                 "--out", str(tmp_path / "runs"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("url, message", [("nonsense", "not a database URL"),
                                          ("postgresql://nobody@127.0.0.1:1/none", "cannot open study storage")])
def test_bad_storage_is_one_line(tmp_path, capsys, url, message):
    code = main(["tune", "--study", "s", "--trials", "2", "--storage", url, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and err.count("\n") == 1, err


def test_train_config_file_refuses_unknown_keys_and_flags_override(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"lr": 0.01, "bogus": 1}')
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    assert "unknown config key(s): bogus" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text('lr = 0.01\nepochs = 4\npreset = "fast"\n')
    config = cfg.config_from_file(tmp_path / "c.toml", epochs=2)
    assert (config.lr, config.epochs, config.model, config.preset) == (0.01, 2, "fast", "fast")


# ------------------------------------------------------------------ a study end to end
def test_study_prunes_writes_results_and_best_config_reproduces(tmp_path):
    data = tiny_data()
    # TPE's seed 6 draws lr 3e-3, 1e-7, 3e-3: the second trial meets the pruner after one finished trial.
    settings = TuneSettings(study="e2e", trials=3, fixed=TINY, space_file=str(write_space(tmp_path / "s.toml")),
                            out_dir=tmp_path / "runs", startup_trials=1, sampler_seed=6)
    report = tune(settings, dataset=data, print_fn=lambda line: None)
    study_dir = tmp_path / "runs" / "tune-e2e"
    rows = list(csv.DictReader((study_dir / "trials.csv").open()))
    assert len(rows) == 3 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert pruned and all(float(r["lr"]) == 1e-7 and r["epochs_reported"] == "1" for r in pruned)
    for r in pruned:
        assert json.loads((Path(r["run_dir"]) / "run.json").read_text())["status"] == "stopped"
    assert report.best_params["lr"] == 3e-3 and report.best_validation > 0.5
    assert 0 <= report.test_accuracy <= 1 and json.loads((study_dir / "best.json").read_text())["trial"] == report.best_number
    for name in ("history", "parallel", "slices"):
        assert (study_dir / "plots" / f"{name}.png").stat().st_size > 5000
    # Every trial is a run directory TensorBoard can show together (HParams are written per run).
    assert all(list((Path(r["run_dir"]) / "validation").glob("events.*")) for r in rows)

    best_config = cfg.config_from_file(study_dir / "best-config.json", threads=1)
    again = train(best_config, out_dir=tmp_path / "again", name="best", dataset=data, print_fn=lambda line: None,
                  progress=False)
    trial_config = json.loads((study_dir / f"trial-{report.best_number:04d}" / "config.json").read_text())
    assert cfg.to_dict(best_config) == trial_config
    assert again.history[-1].validation_accuracy == report.best_validation

    # The same call again finds the study finished: no new trial, the same report.
    assert tune(settings, dataset=data, print_fn=lambda line: None).best_number == report.best_number
    assert len(list(study_dir.glob("trial-*"))) == 3


# ------------------------------------------------------------------ kill -9 and continue
def run_driver(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, str(DRIVER), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=kw.pop("cwd", None))


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def study_trials(storage: str | None, study_dir: Path, name: str):
    if storage is None:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill -9 and flock liveness are POSIX")
def test_kill_9_mid_trial_then_the_same_command_continues(tmp_path):
    args = ["tune", "--study", "k", "--trials", "2", "--out", str(tmp_path / "runs"), *TINY_FLAGS]
    study_dir = tmp_path / "runs" / "tune-k"
    # Trial 0 (its 20 steps) at full speed, then 0.2 s a step: trial 1 trains 4+ s, and its
    # first checkpoint comes 2 s before its end.
    p = run_driver(args, env={"TUNE_DRIVER_STEP_DELAY_S": "0.2", "TUNE_DRIVER_DELAY_AFTER_STEPS": "20"})
    try:
        wait_for(lambda: (study_dir / "trial-0001" / "checkpoint.pt").exists() or p.poll() is not None, 120,
                 "trial 1's first checkpoint")
        assert p.poll() is None, p.stdout.read()
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        p.kill()
    assert [t.state.name for t in study_trials(None, study_dir, "k")] == ["COMPLETE", "RUNNING"]

    again = run_driver(args)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "Marked trial(s) 1 failed: their process is gone" in out
    states = [t.state.name for t in study_trials(None, study_dir, "k")]
    assert states[1] == "FAIL" and states.count("COMPLETE") + states.count("PRUNED") == 2 and len(states) == 3, states
    assert sorted(d.name for d in study_dir.glob("trial-*")) == [f"trial-{i:04d}" for i in range(3)]
    assert "Best trial" in out and (study_dir / "best-config.json").exists()


# ------------------------------------------------------------------ two processes, one PostgreSQL study
@pytest.fixture(scope="module")
def postgres_url():
    if os.environ.get("MNIST_CNN_TEST_PG"):
        yield os.environ["MNIST_CNN_TEST_PG"]
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI must provide a PostgreSQL server: eval \"$(.ci/postgres.sh)\" sets MNIST_CNN_TEST_PG")
    started = subprocess.run(["bash", str(ROOT / ".ci" / "postgres.sh")], capture_output=True, text=True,
                             env={**os.environ, "MNIST_CNN_PG_NO_INSTALL": "1"})
    if started.returncode != 0:
        pytest.skip(f"no PostgreSQL to test against: {started.stderr.strip()[-200:]}")
    env = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.split("\n") if line)
    yield env["MNIST_CNN_TEST_PG"]
    data = env["MNIST_CNN_TEST_PG_DIR"]
    stop = ["pg_ctl", "-D", data, "stop", "-m", "fast"]
    subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + stop, capture_output=True)
    shutil.rmtree(Path(data).parent, ignore_errors=True)


def test_two_tune_processes_share_one_postgresql_study(tmp_path, postgres_url):
    name = f"pg-{os.getpid()}-{int(time.time())}"
    args = ["tune", "--study", name, "--trials", "3", "--storage", postgres_url, *TINY_FLAGS]
    # Each process has its own folder, as on two machines; the study itself lives in the database.
    procs = [run_driver([*args, "--out", str(tmp_path / f"m{i}")], env={"TUNE_DRIVER_STEP_DELAY_S": "0.2"})
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = study_trials(postgres_url, tmp_path, name)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    # Exactly --trials: a worker counts the other's running trial before starting another (two
    # workers used to finish with 4, one each after the first pair).
    assert len(finished) == 3 and len({t.number for t in trials}) == len(trials), [t.state.name for t in trials]
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert all(t.state.name == "FAIL" and not t.params for t in surplus)
    assert sum("not run: the study already has 3 trials" in out for out in outs) == len(surplus)
    # A surplus trial (both processes asked for the last one) never ran: it has no run_dir.
    by_machine = [{t.number for t in trials if t.user_attrs.get("run_dir", "").startswith(str(tmp_path / f"m{i}"))}
                  for i in range(2)]
    assert all(by_machine), f"both processes must have run trials: {by_machine}"
    for i, numbers in enumerate(by_machine):
        assert {d.name for d in (tmp_path / f"m{i}" / f"tune-{name}").glob("trial-*")} == {f"trial-{n:04d}" for n in numbers}


# ------------------------------------------------------------------ lr-find
def assert_sweep_keeps_its_promises(r, start: float, end: float, steps: int) -> None:
    """What lr-find promises, whatever step a CPU's rounding makes the loss cross the stop rule."""
    from mnist_cnn.lr_find import DIVERGED

    n = len(r.lrs)
    assert 3 <= n <= steps and len(r.losses) == len(r.smoothed) == n
    assert r.lrs[0] == pytest.approx(start)
    ratio = (end / start) ** (1 / (steps - 1))
    assert all(b == pytest.approx(a * ratio) for a, b in zip(r.lrs, r.lrs[1:])), "a geometric sweep"
    if r.diverged_at is None:
        assert n == steps and r.lrs[-1] == pytest.approx(end), "an undiverged sweep runs to `end`"
    else:
        assert r.diverged_at == r.lrs[-1] <= end * (1 + 1e-9), "it stops at the rate where the loss diverged"
        last, best = r.smoothed[-1], min(r.smoothed[:-1])
        assert not math.isfinite(last) or last > DIVERGED * best
    # The suggestion sits on the falling part of the smoothed curve, before its minimum.
    at = r.lrs.index(r.suggested_lr)
    finite = [s for s in r.smoothed if math.isfinite(s)]
    lowest = r.smoothed.index(min(finite))
    assert 0 < at < lowest and r.smoothed[at + 1] < r.smoothed[at - 1], (at, lowest)
    assert r.min_lr_over_10 == pytest.approx(r.lrs[lowest] / 10)


def assert_outputs_written(r, out: Path) -> None:
    assert r.png_path == out / "lr-find.png" and r.png_path.stat().st_size > 5000
    rows = list(csv.DictReader((out / "lr-find.csv").open()))
    assert len(rows) == len(r.lrs)
    assert [float(row["lr"]) for row in rows] == pytest.approx(r.lrs)
    assert [float(row["smoothed_loss"]) for row in rows] == pytest.approx(r.smoothed)


@pytest.mark.parametrize("stop", [40, 59, 60, None])
def test_lr_find_promises_hold_wherever_the_sweep_stops(stop, tmp_path):
    """A scripted loss: it falls between steps 12 and 30, is flat, and explodes at step `stop`
    (1-based; None: never). The same checks the real sweep gets must hold for every stop."""
    from mnist_cnn.lr_find import sweep, write_outputs

    calls = []

    def step_loss(lr: float) -> float:
        calls.append(lr)
        step = len(calls)
        if step == stop:
            return 1e3
        return 0.3 + 2.0 / (1 + math.exp((step - 21) / 3))

    r = sweep(1e-6, 1.0, 60, step_loss)
    assert len(r.lrs) == (stop or 60) and r.diverged_at == (r.lrs[-1] if stop else None)
    assert_sweep_keeps_its_promises(r, 1e-6, 1.0, 60)
    assert 15 <= r.lrs.index(r.suggested_lr) <= 27, "the steepest fall of the scripted curve"
    write_outputs(r, tmp_path / "lr", cfg.make_config("default"))
    assert_outputs_written(r, tmp_path / "lr")


def test_lr_find_suggests_a_rate_where_the_loss_falls_and_stops_on_divergence(tmp_path):
    from mnist_cnn.lr_find import lr_find

    config = cfg.make_config("default", batch_size=32, threads=1)
    r = lr_find(config, dataset=tiny_data(), start=1e-6, end=1.0, steps=60, out_dir=tmp_path / "lr")
    # Adam's sweep to 1.0 may or may not cross the stop rule in its last steps, by the CPU's rounding.
    assert_sweep_keeps_its_promises(r, 1e-6, 1.0, 60)
    assert 1e-5 < r.suggested_lr < 1.0 and r.min_lr_over_10 < 1.0
    assert_outputs_written(r, tmp_path / "lr")
    assert not any(tmp_path.glob("**/checkpoint.pt")), "lr-find makes no run directory"
    # SGD at rates up to 1e4 blows the weights up on any CPU: the sweep stops well before its end.
    sgd = cfg.make_config("default", optimizer="sgd", batch_size=32, threads=1)
    r = lr_find(sgd, dataset=tiny_data(), start=1e-4, end=1e4, steps=60, out_dir=None)
    assert r.diverged_at is not None and len(r.lrs) < 60 and r.suggested_lr < r.diverged_at
    assert_sweep_keeps_its_promises(r, 1e-4, 1e4, 60)


def test_lr_find_cli_writes_a_config_train_accepts(tmp_path, monkeypatch, capsys):
    import mnist_cnn.data

    monkeypatch.setattr(mnist_cnn.data, "load_dataset", lambda *a, **k: tiny_data())
    assert main(["lr-find", "--batch-size", "32", "--threads", "1", "--steps", "40", "--end", "100",
                 "--out", str(tmp_path / "lr"), "--write-config", str(tmp_path / "lr.json")]) == 0
    out = capsys.readouterr().out
    assert "Suggested lr" in out
    config = cfg.config_from_file(tmp_path / "lr.json")
    assert config.batch_size == 32 and f"Suggested lr {config.lr:.3g}" in out
