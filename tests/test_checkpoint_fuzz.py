"""Malformed checkpoints and run.json files (issue 12 rows 5, 9, 10, 11), and Hypothesis fuzzing of
both: whatever structure a file holds, it loads, or `evaluate` / `train --resume` answer one line
and a non-zero exit, never a traceback."""
from __future__ import annotations

import copy
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_cnn import config as cfg
from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.runs import read_run_info
from mnist_cnn.cli import main
from mnist_cnn.errors import CheckpointError
from mnist_cnn.fileio import atomic_write_bytes, write_json
from mnist_cnn.inference import load_classifier
from mnist_cnn.runs import CHECKPOINT
from mnist_cnn.train import train
from synthetic import toy_dataset

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A finished 2-epoch toy run: its checkpoint holds the whole resume state."""
    out = tmp_path_factory.mktemp("runs")
    config = cfg.make_config("default", epochs=2, batch_size=100, threads=1)
    threads = torch.get_num_threads()
    try:
        train(config, out_dir=out, name="toy", dataset=toy_dataset(), print_fn=lambda s: None, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out / "toy"


@pytest.fixture(scope="module")
def good_state(toy_run) -> dict:
    return torch.load(toy_run / CHECKPOINT, weights_only=True)


def copy_run(run: Path, where: Path) -> Path:
    """A copy whose run.json says "interrupted", so `train --resume` reads its checkpoint."""
    target = where / "run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("train", "validation", "plots", ".lock"))
    write_json(target / "run.json", {"status": "interrupted"})
    return target


def save_raw(path: Path, state) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def assert_one_line(rc: int, err: str, argv) -> None:
    """Non-zero exit, no traceback, one error line (a non-finite weights warning may precede it)."""
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert rc != 0, (argv, err)
    assert "Traceback" not in err, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("mnist-cnn"), (argv, err)


# ---------------------------------------------------------------- row 5: wrong structure, one line naming file and field
WRONG_FIELDS = {
    "class_names an int": ("class_names", 7, "class_names"),
    "class_names of ints": ("class_names", list(range(10)), "class_names"),
    "config a list": ("config", ["seed"], "config"),
    "config model an int": ("config", {"model": 3}, "config"),
    "epoch a string": ("epoch", "3", "epoch"),
    "global_step a float": ("global_step", 2.5, "global_step"),
    "history a dict": ("history", {"epoch": 1}, "history"),
    "history entries of the wrong shape": ("history", [{"epoch": 1, "loss": 0.3}], "history"),
    "history entry a list": ("history", [[1, 2, 3]], "history"),
    "model a list": ("model", [torch.zeros(3)], "model"),
    "model values not tensors": ("model", {"conv1.weight": 1.0}, "model"),
    "optimizer a string": ("optimizer", "adam", "optimizer"),
    "rng without the torch state": ("rng", {"numpy": {}}, "rng"),
    "step_loss a list": ("step_loss", [0.1, 0.2], "step_loss"),
}


@pytest.mark.parametrize("case", WRONG_FIELDS)
def test_wrong_structure_is_one_line_naming_file_and_field(case, toy_run, good_state, tmp_path, capsys):
    key, value, field = WRONG_FIELDS[case]
    run = copy_run(toy_run, tmp_path)
    save_raw(run / CHECKPOINT, {**good_state, key: value})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(run / CHECKPOINT)
    message = str(e.value)
    assert str(run / CHECKPOINT) in message and repr(field) in message and "\n" not in message
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)]):
        rc, err = run_cli(argv, capsys)
        assert_one_line(rc, err, argv)
        assert rc == 1 and field in err


RUN_JSONS = {"a list": [1, 2], "a string": "complete", "no status": {"started": "now"},
             "status an int": {"status": 3}, "status null": {"status": None}}


@pytest.mark.parametrize("case", RUN_JSONS)
def test_malformed_run_json_is_one_line(case, toy_run, tmp_path, capsys, data_env):
    run = copy_run(toy_run, tmp_path)
    write_json(run / "run.json", RUN_JSONS[case])
    with pytest.raises(CheckpointError, match="run.json"):
        read_run_info(run)
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)], ["compare", str(run), "--no-plot"]):
        rc, err = run_cli(argv, capsys)
        assert_one_line(rc, err, argv)
        assert "run.json" in err


def test_run_json_not_json_and_missing(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path)
    (run / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_run_info(run)
    (run / "run.json").unlink()
    assert read_run_info(run) == {"status": "unknown"}


def test_cli_answers_malformed_files_in_one_line(toy_run, good_state, tmp_path, capsys):
    """Each malformed file through the CLI: in this process (cheap), and the first evaluate and
    first resume case also as real processes of the installed entry point, as a user runs them
    (the fuzzing below is in-process)."""
    cases = {}
    for name, (key, value) in {"class_names": ("class_names", 7), "config": ("config", ["x"]),
                               "epoch": ("epoch", "3"), "history": ("history", [{"loss": 1}])}.items():
        run = copy_run(toy_run, tmp_path / name)
        save_raw(run / CHECKPOINT, {**good_state, key: value})
        cases[f"evaluate {name}"] = ["evaluate", str(run)]
        cases[f"resume {name}"] = ["train", "--resume", str(run)]
    listed = copy_run(toy_run, tmp_path / "runjson")
    (listed / "run.json").write_text("[1, 2]")
    cases["resume run.json list"] = ["train", "--resume", str(listed)]
    cases["evaluate run.json list"] = ["evaluate", str(listed)]
    # Started together: most of a process's time is Python and torch starting up.
    procs = {name: subprocess.Popen([sys.executable, "-m", "mnist_cnn", *cases[name]], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name in ("evaluate class_names", "resume class_names")}
    for name, argv in cases.items():
        rc, err = run_cli(argv, capsys)
        assert_one_line(rc, err, name)
    for name, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert_one_line(p.returncode, err, name)


# ---------------------------------------------------------------- the named file is the file loaded
def test_a_named_checkpoint_file_is_the_file_loaded(toy_run, good_state, tmp_path, capsys):
    run = copy_run(toy_run, tmp_path)
    other = copy.deepcopy(good_state)
    other["class_names"] = [f"other{i}" for i in range(len(good_state["class_names"]))]
    other["global_step"] = 12345
    save_raw(run / "other.pt", other)
    named = load_classifier(run / "other.pt", "cpu")
    assert named.class_names == tuple(other["class_names"]) and named.global_step == 12345
    assert named.source == run / "other.pt" and named.run_dir is None  # outputs go beside the file, not into the run
    assert named.output_dir("evaluation") == run / "other.pt.evaluation"
    own = load_classifier(run / CHECKPOINT, "cpu")
    assert own.class_names == tuple(good_state["class_names"]) and own.run_dir == run and own.status == "interrupted"
    assert load_classifier(run, "cpu").class_names == own.class_names
    # Through the CLI: predict with the named file prints its class names.
    from PIL import Image

    Image.fromarray(toy_dataset().test.images[0, 0].numpy()).save(tmp_path / "digit.png")
    capsys.readouterr()
    rc = main(["predict", str(run / "other.pt"), str(tmp_path / "digit.png"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and "other" in captured.out, captured


def test_probabilities_are_the_softmax_of_the_logits(toy_run):
    classifier = load_classifier(toy_run, "cpu")
    images = toy_dataset().test.images[:16]
    probs = classifier.probabilities(images)
    assert probs.shape == (16, len(classifier.class_names))
    torch.testing.assert_close(probs, torch.softmax(classifier.logits(images), 1))
    torch.testing.assert_close(probs.sum(1), torch.ones(16))


# ---------------------------------------------------------------- row 9: non-finite weights
def test_non_finite_weights_load_with_a_warning(toy_run, good_state, tmp_path, capsys):
    run = copy_run(toy_run, tmp_path)
    state = copy.deepcopy(good_state)
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    if state.get("ema") is not None:
        state["ema"][name] = state["model"][name].clone()
    save_raw(run / CHECKPOINT, state)
    capsys.readouterr()
    classifier = load_classifier(run, "cpu")
    err = capsys.readouterr().err
    assert classifier.model is not None
    assert len(err.splitlines()) == 1 and err.startswith("warning:") and "not finite" in err and str(run / CHECKPOINT) in err
    load_checkpoint(toy_run / CHECKPOINT)
    assert capsys.readouterr().err == "", "finite weights load without a word"


# ---------------------------------------------------------------- row 10: pickled Python objects
class Payload:
    """Stands for any class: unpickling it would import and run code."""


@pytest.mark.parametrize("how", ["torch.save", "pickle.dumps"])
def test_a_pickle_of_python_objects_is_refused_with_the_readmes_words(how, good_state, tmp_path, capsys):
    import argparse

    path = tmp_path / "evil.pt"
    state = {**good_state, "config": argparse.Namespace(model="seed"), "extra": Payload()}
    if how == "torch.save":
        save_raw(path, state)
    else:
        path.write_bytes(pickle.dumps({"format": "mnist-cnn-checkpoint", "payload": Payload()}, protocol=4))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "holds Python objects" in str(e.value) and "\n" not in str(e.value)
    rc, err = run_cli(["evaluate", str(path)], capsys)
    assert_one_line(rc, err, how)
    assert "holds Python objects" in err


def test_plain_garbage_is_not_called_python_objects(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00a")  # a pickle cut short
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "Python objects" not in str(e.value)


# ---------------------------------------------------------------- row 11: permissions
def test_atomic_writes_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "a.bin", b"y")  # a replacement gets the umask of its own write
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_files_are_readable_by_the_group_and_others(tmp_path):
    old = os.umask(0o022)
    threads = torch.get_num_threads()
    try:
        result = train(cfg.make_config("default", epochs=1, batch_size=100, threads=1), out_dir=tmp_path, name="r",
                       dataset=toy_dataset(), print_fn=lambda s: None, progress=False)
    finally:
        os.umask(old)
        torch.set_num_threads(threads)
    for name in ("config.json", "metrics.csv", CHECKPOINT, "run.json", "environment.json"):
        mode = stat.S_IMODE((result.run_dir / name).stat().st_mode)
        assert mode == 0o644, (name, oct(mode))


# ---------------------------------------------------------------- fuzzing
def structures(max_leaves: int = 8):
    """Any value torch.save / JSON can hold: scalars, strings, small tensors, nested lists and dicts."""
    tensors = st.builds(lambda shape, kind: torch.zeros(shape, dtype=kind),
                        st.lists(st.integers(0, 3), max_size=3).map(tuple),
                        st.sampled_from([torch.float32, torch.int64, torch.uint8, torch.bool]))
    scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=6) | tensors
    keys = st.text(max_size=6) | st.integers(-3, 3)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                        | st.dictionaries(keys, inner, max_size=4), max_leaves=max_leaves)


# Where a random value goes: a top-level field, or one level inside those readers walk into.
PLACES = ["format", "version", "config", "class_names", "model", "ema", "optimizer", "schedule", "rng", "history",
          "epoch", "step_in_epoch", "global_step", "epoch_seconds", "step_loss", "step_correct",
          "config.model", "config.dataset", "config.validation_size", "config.channels_last", "config.epochs",
          "config.batch_size", "config.lr", "rng.torch", "rng.numpy", "rng.python", "rng.data_order",
          "history.0", "history.0.epoch", "history.0.train_loss", "optimizer.state", "optimizer.param_groups",
          "model.conv1.weight"]


def altered(state: dict, place: str, value, drop: bool) -> dict:
    state = copy.deepcopy(state)
    head, _, rest = place.partition(".")
    if not rest:
        if drop:
            state.pop(head, None)
        else:
            state[head] = value
        return state
    container = state[head]
    key, _, last = rest.partition(".")
    if head == "model":
        key, last = rest, ""
    key = int(key) if isinstance(container, list) else key
    if last:
        container = container[key]
        key = last
    if drop and isinstance(container, dict):
        container.pop(key, None)
    else:
        container[key] = value
    return state


@settings(FUZZ, max_examples=100)
@given(place=st.sampled_from(PLACES), value=structures(), drop=st.booleans())
def test_fuzzed_checkpoints_load_or_raise_checkpoint_error(good_state, place, value, drop):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / CHECKPOINT
        save_raw(path, altered(good_state, place, value, drop))
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return
        assert isinstance(state, dict)


@settings(FUZZ, max_examples=40)
@given(place=st.sampled_from(PLACES), value=structures(), drop=st.booleans(), command=st.sampled_from(["evaluate", "resume"]))
def test_fuzzed_checkpoints_through_the_cli(toy_run, good_state, data_env, capsys, place, value, drop, command):
    """evaluate or train --resume on a run whose checkpoint has one field replaced: it runs, or
    one line (data_env has no MNIST, so a checkpoint that passes stops at the data, in one line)."""
    with tempfile.TemporaryDirectory() as d:
        run = copy_run(toy_run, Path(d))
        save_raw(run / CHECKPOINT, altered(good_state, place, value, drop))
        argv = ["evaluate", str(run), "--no-files"] if command == "evaluate" else ["train", "--resume", str(run)]
        rc, err = run_cli(argv, capsys)
        assert_one_line(rc, err, (argv, place, drop))


@settings(FUZZ, max_examples=60)
@given(content=structures() | st.dictionaries(st.just("status"), structures(4), min_size=1)
       | st.fixed_dictionaries({"status": st.sampled_from(["complete", "interrupted", "running", "odd"])}),
       command=st.sampled_from(["evaluate", "resume", "compare"]))
def test_fuzzed_run_json_through_the_cli(toy_run, data_env, capsys, content, command):
    with tempfile.TemporaryDirectory() as d:
        run = copy_run(toy_run, Path(d))
        text = json.dumps(content, default=lambda t: t.tolist())
        (run / "run.json").write_text(text)
        argv = {"evaluate": ["evaluate", str(run), "--no-files"], "resume": ["train", "--resume", str(run)],
                "compare": ["compare", str(run), "--no-plot"]}[command]
        capsys.readouterr()
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse only; never expected here
            pytest.fail(f"{argv} exited {e.code}")
        err = capsys.readouterr().err
        if rc != 0:
            assert_one_line(rc, err, (argv, text))
        else:
            assert "Traceback" not in err
