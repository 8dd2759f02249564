"""Never lose work: kill -9, SIGINT and SIGTERM at random points of a real `mnist-cnn train`
process, then resume, and the run must equal an uninterrupted one bit for bit (weights,
optimizer state, metrics.csv, TensorBoard scalars). Also: kills and disk errors during a
checkpoint write keep the previous checkpoint, and bad checkpoints are refused in one line.

The runs use tests/resume_driver.py: the real CLI with the toy data set swapped in and a
`step K` line after each step (see there). 3 epochs x 12 steps of 50 images each.
Random kill points are drawn from a fresh seed; a failure message names it for a rerun
(MNIST_CNN_KILL_SEED=<seed>).

Bit-identity is the point here, and it is asserted on one machine: the interrupted run and its
reference run on the same CPU, with the same thread count, in the same session. Nothing is
compared against figures recorded on another machine.
"""
from __future__ import annotations

import csv
import io
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mnist_cnn import config as cfg
from mnist_cnn import fileio  # the atomic write behind save_checkpoint
from mnist_cnn import precision
from mnist_cnn.checkpoint import load_checkpoint, save_checkpoint
from mnist_cnn.cli import main
from mnist_cnn.errors import CheckpointError
from mnist_cnn.runs import CHECKPOINT, read_json
from mnist_cnn.tbexport import read_scalars
from mnist_cnn.train import train
from synthetic import toy_dataset

DRIVER = Path(__file__).with_name("resume_driver.py")
STEPS_PER_EPOCH, EPOCHS = 12, 3          # 600 toy images / batch 50, 3 epochs
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
TOY = dict(epochs=EPOCHS, batch_size=50, threads=1, seed=0)
TOY_FLAGS = ["--epochs", "3", "--batch-size", "50", "--threads", "1", "--no-progress"]
QUIET = dict(print_fn=lambda s: None, progress=False)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill tests use POSIX signals and /proc")


def kill_rng() -> tuple[random.Random, int]:
    seed = int(os.environ.get("MNIST_CNN_KILL_SEED") or random.SystemRandom().randrange(2**32))
    return random.Random(seed), seed


def run_in_process(out: Path, name: str, **overrides) -> Path:
    """The toy run in this process, with torch's thread count restored afterwards."""
    threads = torch.get_num_threads()
    try:
        train(cfg.make_config("default", **{**TOY, **overrides}), out_dir=out, name=name, dataset=toy_dataset(), **QUIET)
    finally:
        torch.set_num_threads(threads)
    return out / name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every killed-and-resumed run must equal (seed 0)."""
    return run_in_process(tmp_path_factory.mktemp("reference"), "ref")


# bf16 runs use the CPU's AMX-BF16/AVX512-BF16 kernels where it has them. Elsewhere the driver
# and the reference pretend it does (DRIVER_EMULATE_NATIVE_BF16): autocast then runs torch's
# emulated bf16 kernels, slower, but the same resume logic is exercised on every machine.
NATIVE_BF16 = precision.bf16_support(torch.device("cpu")).native
BF16_ENV = {} if NATIVE_BF16 else {"DRIVER_EMULATE_NATIVE_BF16": "1"}


@pytest.fixture(scope="module")
def bf16_reference(tmp_path_factory) -> Path:
    """The uninterrupted --amp bf16 run (seed 0)."""
    with pytest.MonkeyPatch.context() as mp:
        if not NATIVE_BF16:
            mp.setattr(precision, "cpu_bf16_flags", lambda: ({"amx_bf16": True, "avx512_bf16": False}, "emulated"))
        run = run_in_process(tmp_path_factory.mktemp("bf16-reference"), "ref", amp="bf16")
    assert read_json(run / "config.json")["amp"] == "bf16"
    return run


class Proc:
    """`python resume_driver.py ARGS` with its stdout read line by line on a thread."""

    def __init__(self, args: list[str], tmp: Path, **env: str) -> None:
        self.stderr_file = tmp / f"stderr-{time.monotonic_ns()}.txt"
        with open(self.stderr_file, "w") as err:
            self.p = subprocess.Popen([sys.executable, str(DRIVER), *map(str, args)], stdout=subprocess.PIPE,
                                      stderr=err, text=True, env={**os.environ, **env})
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, wanted: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.p.kill()
                raise AssertionError(f"never printed {wanted!r}; stdout tail {self.stdout[-5:]}, "
                                     f"stderr {self.stderr()!r}")
            self.stdout.append(line)
            if line == wanted:
                return

    def send(self, sig: signal.Signals) -> None:
        self.p.send_signal(sig)

    def finish(self, timeout: float = 120) -> int:
        rc = self.p.wait(timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.stdout.append(line)
        return rc

    def stderr(self) -> str:
        return self.stderr_file.read_text()

    def last_step(self) -> int:
        return max([int(s.split()[1]) for s in self.stdout if s.startswith("step ")], default=0)


def train_flags(out: Path, name: str, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--name", name, *TOY_FLAGS, *extra]


def resume_to_end(run: Path, tmp: Path, **env: str) -> Proc:
    p = Proc(["train", "--resume", run], tmp, **env)
    rc = p.finish()
    assert rc == 0, p.stderr()
    assert any(line.startswith(f"Resuming {run} at epoch") for line in p.stdout)
    return p


def metrics_without_times(run: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(open(run / "metrics.csv", newline="")))
    for r in rows:
        r.pop("seconds")  # wall time: the only column allowed to differ
    return rows


def scalars(run: Path, writer: str) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(step, value) for _, step, value in rows] for tag, rows in read_scalars(run / writer).items()}


def assert_same_run(run: Path, ref: Path) -> None:
    """Bit-identical weights and optimizer state; same metrics.csv and TensorBoard scalars."""
    a, b = load_checkpoint(run / CHECKPOINT), load_checkpoint(ref / CHECKPOINT)
    assert a["global_step"] == b["global_step"] == TOTAL_STEPS
    assert a["model"].keys() == b["model"].keys()
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"weights {key} differ"
    for i, state in b["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(a["optimizer"]["state"][i][key], value), f"optimizer state {i}.{key} differs"
    assert metrics_without_times(run) == metrics_without_times(ref)
    assert len(metrics_without_times(ref)) == EPOCHS
    for writer in ("train", "validation"):
        got, want = scalars(run, writer), scalars(ref, writer)
        assert got == want, f"{writer} TensorBoard scalars differ"
    assert [s for s, _ in scalars(ref, "train")["loss"]] == list(range(1, TOTAL_STEPS + 1))
    assert read_json(run / "run.json")["status"] == "complete"
    assert not list(run.glob(".*.tmp")), "stale temporary files left in the run directory"


def checkpoint_steps(every: int) -> set[int]:
    epoch_ends = set(range(STEPS_PER_EPOCH, TOTAL_STEPS + 1, STEPS_PER_EPOCH))
    return epoch_ends | (set(range(every, TOTAL_STEPS + 1, every)) if every else set())


# ------------------------------------------------------------------ kill -9 and resume
@pytest.mark.parametrize("amp", ["auto", "bf16"])  # auto: bf16 where the CPU has it, else float32
def test_sigkill_at_a_random_point_then_resume_is_bit_identical(request, amp, tmp_path):
    reference = request.getfixturevalue("bf16_reference" if amp == "bf16" else "reference")
    env = BF16_ENV if amp == "bf16" else {}
    rng, seed = kill_rng()
    every = 5  # checkpoints at 5, 10, 12, 15, 20, 24, ...: mid-epoch and epoch-end ones
    kill_after = rng.randint(6, 30)
    p = Proc(train_flags(tmp_path, "run", "--checkpoint-every", str(every), "--amp", amp), tmp_path,
             DRIVER_STEP_DELAY_S="0.05", **env)
    p.wait_for(f"step {kill_after}")
    time.sleep(rng.uniform(0, 0.05))  # anywhere inside the next step or checkpoint
    p.send(signal.SIGKILL)
    assert p.finish() == -signal.SIGKILL
    run, last = tmp_path / "run", p.last_step()
    assert read_json(run / "run.json")["status"] == "running", "a killed run must not look complete"
    saved = load_checkpoint(run / CHECKPOINT)["global_step"]
    done = {s for s in checkpoint_steps(every) if s <= last}
    # The newest checkpoint at or before the last finished step (or the one before it, when
    # the kill came while that step's checkpoint was being written).
    assert saved in sorted(done)[-2:] and (saved == max(done) or last in done), (seed, last, saved)
    assert load_checkpoint(run / CHECKPOINT)["config"]["amp"] == read_json(reference / "config.json")["amp"]
    resume_to_end(run, tmp_path, **env)
    assert_same_run(run, reference)


def test_sigkill_during_checkpoint_writes_keeps_the_previous_one(reference, tmp_path):
    """checkpoint_every=1: kill once deterministically inside a checkpoint write, then twice
    at random moments (mostly inside checkpoint writes: they dominate a step's time)."""
    rng, seed = kill_rng()
    run = tmp_path / "run"
    at = rng.randint(2, 20)
    p = Proc(train_flags(tmp_path, "run", "--checkpoint-every", "1"), tmp_path, DRIVER_SLOW_CHECKPOINT_AT=str(at))
    p.wait_for("writing-checkpoint")  # the temp file is written, the rename has not happened
    p.send(signal.SIGKILL)
    assert p.finish() == -signal.SIGKILL
    assert list(run.glob(".checkpoint.pt.*.tmp")), "the kill should have left the unfinished temp file"
    assert load_checkpoint(run / CHECKPOINT)["global_step"] == at - 1, seed
    mid_write = 1
    for _ in range(2):
        before = load_checkpoint(run / CHECKPOINT)["global_step"]
        p = Proc(["train", "--resume", run], tmp_path, DRIVER_STEP_DELAY_S="0.01")
        p.wait_for(f"step {rng.randint(1, 4)}")
        time.sleep(rng.uniform(0, 0.15))
        p.send(signal.SIGKILL)
        assert p.finish() == -signal.SIGKILL
        state = load_checkpoint(run / CHECKPOINT)  # must load whatever moment the kill hit
        assert before <= state["global_step"] <= before + p.last_step() < TOTAL_STEPS, seed
        mid_write += bool(list(run.glob(".checkpoint.pt.*.tmp")))
    resume_to_end(run, tmp_path)
    assert_same_run(run, reference)
    print(f"kill seed {seed}: {mid_write} of 3 kills landed inside a checkpoint write")


def test_a_run_being_trained_cannot_be_resumed_or_replaced_twice(reference, tmp_path, monkeypatch, capsys):
    """A second `--resume` (or `--force`) while the run trains is refused; kill -9 frees it."""
    run = tmp_path / "run"
    p = Proc(train_flags(tmp_path, "run", "--checkpoint-every", "2"), tmp_path, DRIVER_STEP_DELAY_S="0.5")
    p.wait_for("step 3")  # a checkpoint exists; about 16 s of steps are left
    monkeypatch.setattr("mnist_cnn.data.load_dataset", lambda *a, **k: toy_dataset())
    threads = torch.get_num_threads()
    try:
        for argv in (["train", "--resume", str(run)], train_flags(tmp_path, "run", "--force")):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "is being trained by another process right now" in err, err
        assert p.p.poll() is None, "the running training must not be disturbed"
        p.send(signal.SIGKILL)
        assert p.finish() == -signal.SIGKILL
        assert main(["train", "--resume", str(run)]) == 0  # the kernel dropped the dead process's lock
    finally:
        torch.set_num_threads(threads)
    assert_same_run(run, reference)


# ------------------------------------------------------------------ SIGINT / SIGTERM
def test_sigint_then_sigterm_stop_cleanly_and_resume_bit_identical(reference, tmp_path):
    rng, seed = kill_rng()
    run = tmp_path / "run"
    argv = train_flags(tmp_path, "run")
    for sig in (signal.SIGINT, signal.SIGTERM):
        p = Proc(argv, tmp_path, DRIVER_STEP_DELAY_S="0.03")
        p.wait_for(f"step {rng.randint(2, 9)}")
        p.send(sig)
        assert p.finish() == 130, p.stderr()
        err = p.stderr().splitlines()
        assert len(err) == 1 and err[0].startswith(f"mnist-cnn: error: training stopped by {sig.name}"), err
        assert err[0].endswith(f"state saved. Resume with: mnist-cnn train --resume {run}"), err
        assert read_json(run / "run.json")["status"] == "interrupted"
        assert load_checkpoint(run / CHECKPOINT)["global_step"] >= p.last_step()  # nothing done is lost
        argv = ["train", *err[0].split("mnist-cnn train ")[1].split()]  # the printed command, as given
    resume_to_end(run, tmp_path)
    assert_same_run(run, reference)


# ------------------------------------------------------------------ determinism
def test_same_seed_same_run_across_processes_and_other_seed_differs(reference, tmp_path):
    p = Proc(train_flags(tmp_path, "again"), tmp_path)
    assert p.finish() == 0, p.stderr()
    assert_same_run(tmp_path / "again", reference)
    other = run_in_process(tmp_path, "seed1", seed=1)
    a, b = load_checkpoint(other / CHECKPOINT)["model"], load_checkpoint(reference / CHECKPOINT)["model"]
    assert not any(torch.equal(a[k], b[k]) for k in b)
    assert metrics_without_times(other) != metrics_without_times(reference)
    assert scalars(other, "train")["loss"] != scalars(reference, "train")["loss"]


# ------------------------------------------------------------------ write failures (deterministic)
@pytest.mark.parametrize("failing", ["create-temp", "write", "fsync", "replace"])
def test_failed_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch, failing):
    path = tmp_path / CHECKPOINT
    old = {"config": {}, "model": {"w": torch.arange(4.0)}, "class_names": ["a"]}
    save_checkpoint(path, old)
    before = path.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "write":
        real_fdopen = os.fdopen

        class FullDisk(io.RawIOBase):
            def __init__(self, fd):
                self.f = real_fdopen(fd, "wb")

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                no_space()

            def close(self):
                self.f.close()

        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: FullDisk(fd))
    elif failing == "create-temp":
        monkeypatch.setattr(fileio.os, "open", no_space)
    else:
        monkeypatch.setattr(fileio.os, failing, no_space)
    with pytest.raises(CheckpointError, match="No space left on device") as e:
        save_checkpoint(path, {**old, "model": {"w": torch.zeros(4)}})
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # the temp file is cleaned up


def test_disk_full_mid_training_is_one_line_and_resumable(reference, tmp_path, monkeypatch, capsys):
    """The 2nd epoch's checkpoint cannot be written: exit 1, one line, the 1st epoch's
    checkpoint kept, run marked failed; once there is space, resume ends bit-identical."""
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if str(dst).endswith(CHECKPOINT):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    monkeypatch.setattr("mnist_cnn.data.load_dataset", lambda *a, **k: toy_dataset())
    threads = torch.get_num_threads()
    try:
        rc = main(train_flags(tmp_path, "run"))
        out, err = capsys.readouterr()
        assert rc == 1
        assert err.count("\n") == 1 and err.startswith("mnist-cnn: error: ") and "No space left" in err, err
        assert f"--resume {tmp_path / 'run'}" in err
        run = tmp_path / "run"
        assert read_json(run / "run.json")["status"] == "failed"
        assert load_checkpoint(run / CHECKPOINT)["global_step"] == STEPS_PER_EPOCH
        monkeypatch.setattr(fileio.os, "replace", real_replace)
        assert main(["train", "--resume", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert_same_run(run, reference)


# ------------------------------------------------------------------ refusing bad checkpoints
def _bad_checkpoints(good: Path, where: Path) -> dict[str, Path]:
    state = load_checkpoint(good)
    raw = good.read_bytes()
    made = {}

    def put(name: str, data: bytes) -> None:
        made[name] = where / name / CHECKPOINT
        made[name].parent.mkdir()
        made[name].write_bytes(data)

    def put_state(name: str, obj) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        put(name, buffer.getvalue())

    other_model = dict(state, model={**state["model"], "fc1.weight": torch.zeros(64, 784), "fc1.bias": torch.zeros(64)})
    put_state("other-model", other_model)
    put_state("other-keys", dict(state, model={"layer.weight": torch.zeros(3, 3)}))
    put_state("version-99", dict(state, version=99))
    put_state("unknown-model", dict(state, config={**state["config"], "model": "resnet-from-the-future"}))
    put_state("future-config", dict(state, config={**state["config"], "warp_drive": True}))
    put_state("not-ours", {"weights": torch.zeros(3)})
    put_state("plain-tensor", torch.zeros(3))
    put("truncated", raw[: len(raw) // 2])
    put("truncated-tail", raw[:-100])
    put("empty", b"")
    put("text", b"hello, I am not a checkpoint\n")
    put("random-bytes", random.Random(0).randbytes(5000))
    for name in made:
        (where / name / "run.json").write_text('{"status": "interrupted"}')
    return made


def test_bad_checkpoints_are_refused_in_one_line(reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mnist_cnn.data.load_dataset", lambda *a, **k: toy_dataset())
    bad = _bad_checkpoints(reference / CHECKPOINT, tmp_path)
    threads = torch.get_num_threads()
    try:
        for name, path in bad.items():
            for argv in (["train", "--resume", str(path.parent)], ["evaluate", str(path.parent)]):
                if name == "future-config" and argv[0] == "evaluate":
                    continue  # evaluating needs only the model name and weights: it still works
                rc = main(argv)
                out, err = capsys.readouterr()
                assert rc == 1, (name, argv, err)
                assert err.count("\n") == 1 and err.startswith("mnist-cnn: error: "), (name, argv, err)
                assert str(path.parent) in err, (name, err)
            with pytest.raises(CheckpointError):
                train(resume=path.parent, dataset=toy_dataset(), **QUIET)
    finally:
        torch.set_num_threads(threads)
    assert "version 99" in _error_of(bad["version-99"])
    assert "does not fit this model" in _error_of(bad["other-model"])
    assert "cannot use: unknown config key(s): warp_drive" in _error_of(bad["future-config"])


def test_weights_only_checkpoint_evaluates_but_does_not_resume(reference, tmp_path, monkeypatch, capsys):
    state = load_checkpoint(reference / CHECKPOINT)
    run = tmp_path / "weights-only"
    run.mkdir()
    save_checkpoint(run / CHECKPOINT, {k: state[k] for k in ("config", "model", "class_names")})
    monkeypatch.setattr("mnist_cnn.data.load_dataset", lambda *a, **k: toy_dataset())
    assert main(["evaluate", str(run)]) == 0
    assert "Accuracy" in capsys.readouterr().out
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds weights but not the training state to resume (no optimizer" in err, err


def _error_of(path: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        train(resume=path.parent, dataset=toy_dataset(), **QUIET)
    return str(e.value)


def test_resumed_event_files_sort_after_the_interrupted_ones(tmp_path):
    """TensorBoard reads event files in name order (`...tfevents.<second>.<host>.<pid>.<n>`); a
    run resumed in the same second by the same process once sorted "…11" before "…9" and
    scrambled its curves. The resumed logger now starts its files in a later second."""
    from mnist_cnn.runlog import RunLogger

    (tmp_path / "train").mkdir()
    old = f"events.out.tfevents.{int(time.time()) + 1}.host.1.9"  # an interrupted run's file, 1 s ahead
    (tmp_path / "train" / old).write_bytes(b"")
    logger = RunLogger(tmp_path, purge_step=5, print_fn=lambda s: None, progress=False)
    logger.close()
    names = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert len(names) == 2 and names[0] == old, names
