"""Bad input, everywhere: every command tried with wrong things, as a new user would.

Each case must end in exactly one line on stderr starting `mnist-cnn`, exit code 2 (usage)
or 1 (runtime), and no traceback; a run that fails must not be left looking complete.
Most cases call `mnist_cnn.cli.main` in this process; a few run the real command.
"""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_cnn import config as cfg
from mnist_cnn.cli import main
from mnist_cnn.data.registry import DATASETS
from mnist_cnn.runs import CHECKPOINT, read_json
from mnist_cnn.train import train
from synthetic import toy_dataset

USAGE, RUNTIME = 2, 1


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mnist-cnn ARGV`; any escaping exception fails the test."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors exit through SystemExit
        rc = e.code
    except BaseException as e:  # what would have been a traceback
        pytest.fail(f"mnist-cnn {' '.join(argv)} raised {type(e).__name__}: {e}")
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, expected_rc: int, argv: list[str]) -> None:
    lines = err.splitlines()
    assert rc == expected_rc, (argv, rc, err)
    assert len(lines) == 1 and lines[0].startswith("mnist-cnn"), (argv, err)
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> Path:
    """A finished 1-epoch toy run (its config says dataset mnist)."""
    out = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    try:
        train(cfg.make_config("default", epochs=1, batch_size=100, threads=1), out_dir=out, name="done",
              dataset=toy_dataset(), print_fn=lambda s: None, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out / "done"


def corrupt_idx_dir(where: Path) -> Path:
    """MNIST's four file names holding: wrong magic, truncated images, garbage, a bad gzip."""
    names = {spec.name: spec for spec in DATASETS["mnist"].files}
    where.mkdir()
    (where / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, 60000, 28, 28) + b"\0" * 999)
    (where / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0999, 60000) + b"\1" * 60000)
    (where / "t10k-images-idx3-ubyte").write_bytes(os.urandom(2000))
    (where / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0" * 100)[:-9])
    assert {p.name.removesuffix(".gz") for p in where.iterdir()} == set(names)
    return where


# ---------------------------------------------------------------- no run needed
BAD_TRAIN_FLAGS = {
    "unknown preset": (["--preset", "nope"], USAGE),
    "unknown model": (["--model", "nope"], USAGE),
    "unknown data set": (["--dataset", "cifar10"], USAGE),
    "zero epochs": (["--epochs", "0"], USAGE),
    "negative epochs": (["--epochs", "-3"], USAGE),
    "fractional epochs": (["--epochs", "1.5"], USAGE),
    "non-numeric epochs": (["--epochs", "many"], USAGE),
    "zero batch size": (["--batch-size", "0"], USAGE),
    "negative batch size": (["--batch-size", "-128"], USAGE),
    "lr 0": (["--lr", "0"], USAGE),
    "lr negative": (["--lr", "-0.001"], USAGE),
    "lr NaN": (["--lr", "nan"], USAGE),
    "lr inf": (["--lr", "inf"], USAGE),
    "lr overflowing to inf": (["--lr", "1e999"], USAGE),
    "lr non-numeric": (["--lr", "fast"], USAGE),
    "momentum NaN": (["--momentum", "nan"], USAGE),
    "warmup 1": (["--warmup", "1"], USAGE),
    "label smoothing negative": (["--label-smoothing", "-0.1"], USAGE),
    "weight decay inf": (["--weight-decay", "inf"], USAGE),
    "seed negative": (["--seed", "-1"], USAGE),
    "seed too large for numpy": (["--seed", str(2**32)], USAGE),
    "threads negative": (["--threads", "-2"], USAGE),
    "checkpoint_every negative": (["--checkpoint-every", "-1"], USAGE),
    "unknown optimizer": (["--optimizer", "lbfgs"], USAGE),
    "unknown device": (["--device", "tpu"], USAGE),
    "unknown flag": (["--epoch", "3", "--learning-rate", "1"], USAGE),
    "missing flag value": (["--epochs"], USAGE),
    "resume missing run": (["--resume", "no/such/run"], USAGE),
    "run name with a path in it": (["--name", "a/b"], USAGE),
    "run name ..": (["--name", ".."], USAGE),
}


@pytest.mark.parametrize("case", BAD_TRAIN_FLAGS)
def test_bad_train_flags(case, tmp_path, capsys, data_env):
    flags, expected = BAD_TRAIN_FLAGS[case]
    argv = ["train", "--out", str(tmp_path / "runs"), *flags]
    rc, out, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, expected, argv)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "a run dir was left behind"


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["--verbose", "train"], ["models", "extra"], ["evaluate"],
    ["export-csv"], ["evaluate", "x", "--split", "dev"], ["evaluate", "x", "--device", "gpu"],
])
def test_bad_commands_and_arguments(argv, capsys):
    rc, out, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, USAGE, argv)


def test_missing_run_dirs(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["evaluate", str(tmp_path / "nope")], USAGE),
        (["evaluate", str(a_file)], USAGE),
        (["evaluate", str(empty)], RUNTIME),          # a directory, but no checkpoint in it
        (["train", "--resume", str(empty)], RUNTIME),
        (["export-csv", str(tmp_path / "nope")], USAGE),
        (["export-csv", str(empty)], USAGE),
        (["train", "--out", str(a_file), "--name", "x"], USAGE),  # --out is a file
    ]
    for argv, expected in cases:
        rc, out, err = run_cli(argv, capsys)
        assert_one_line_error(rc, err, expected, argv)


# ---------------------------------------------------------------- with a finished run
def test_existing_run_dir_is_never_overwritten_silently(complete_run, capsys):
    before = (complete_run / CHECKPOINT).read_bytes()
    argv = ["train", "--out", str(complete_run.parent), "--name", complete_run.name]
    rc, out, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, USAGE, argv)
    assert "--force" in err and "--resume" in err
    assert (complete_run / CHECKPOINT).read_bytes() == before


def test_resume_of_a_complete_run_and_resume_with_overrides(complete_run, capsys):
    for argv in (["train", "--resume", str(complete_run)],
                 ["train", "--resume", str(complete_run), "--epochs", "9"],
                 ["train", "--resume", str(complete_run), "--force"]):
        rc, out, err = run_cli(argv, capsys)
        assert_one_line_error(rc, err, USAGE, argv)
    assert read_json(complete_run / "run.json")["status"] == "complete"


def test_corrupt_checkpoint_for_evaluate(complete_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    raw = (complete_run / CHECKPOINT).read_bytes()
    for data in (raw[:1000], raw[: len(raw) - 1], b"", b"PK\x03\x04" + os.urandom(500), b"\x80\x02}q\x00."):
        (run / CHECKPOINT).write_bytes(data)
        rc, out, err = run_cli(["evaluate", str(run)], capsys)
        assert_one_line_error(rc, err, RUNTIME, ["evaluate", len(data)])


def test_corrupt_idx_files(complete_run, tmp_path, capsys, data_env):
    bad = corrupt_idx_dir(tmp_path / "idx")
    argv = ["evaluate", str(complete_run), "--data-dir", str(bad)]
    rc, out, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, RUNTIME, argv)
    argv = ["train", "--out", str(tmp_path / "runs"), "--name", "r", "--data-dir", str(bad)]
    rc, out, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, RUNTIME, argv)
    assert read_json(tmp_path / "runs" / "r" / "run.json")["status"] == "failed"
    argv = ["evaluate", str(complete_run), "--data-dir", str(tmp_path / "no-such-dir")]
    rc, out, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, USAGE, argv)


# ---------------------------------------------------------------- real processes
def test_real_processes_fail_in_one_line(complete_run, tmp_path, data_env):
    """The installed entry point, run as a user would: no traceback, one line, right code."""
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / CHECKPOINT).write_bytes((complete_run / CHECKPOINT).read_bytes()[:5000])
    bad_idx = corrupt_idx_dir(tmp_path / "idx")
    cases = {
        "no command": ([], USAGE),
        "zero epochs": (["train", "--epochs", "0"], USAGE),
        "lr NaN": (["train", "--lr", "nan"], USAGE),
        "seed too large": (["train", "--seed", "99999999999999999999"], USAGE),
        "missing run": (["evaluate", str(tmp_path / "nope")], USAGE),
        "truncated checkpoint": (["evaluate", str(corrupt)], RUNTIME),
        "corrupt IDX files": (["train", "--out", str(tmp_path / "runs"), "--name", "r", "--data-dir", str(bad_idx)], RUNTIME),
    }
    # Started together: most of each one's time is Python and torch starting up.
    procs = {name: subprocess.Popen([sys.executable, "-m", "mnist_cnn", *argv], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for name, (argv, _) in cases.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=180)
        assert_one_line_error(p.returncode, err, cases[name][1], [name])
    assert read_json(tmp_path / "runs" / "r" / "run.json")["status"] == "failed"


# ---------------------------------------------------------------- the other commands
def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def junk(complete_run, tmp_path_factory) -> Path:
    """Files a new user might point the commands at by mistake."""
    import struct as st
    import zlib

    from PIL import Image

    d = tmp_path_factory.mktemp("junk")
    digit = Image.new("L", (40, 40), 255)
    for x in range(10, 30):
        digit.putpixel((x, 20), 0)
    (d / "ok.png").write_bytes(_png(digit))
    (d / "text.png").write_text("hello\n")
    (d / "zero.png").write_bytes(b"")
    (d / "trunc.png").write_bytes(_png(digit)[:60])
    tiff = __import__("io").BytesIO()
    digit.save(tiff, "TIFF")
    (d / "trunc.tif").write_bytes(tiff.getvalue()[:200])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return st.pack(">I", len(data)) + kind + data + st.pack(">I", zlib.crc32(kind + data))

    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", st.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
                                 + chunk(b"IEND", b""))  # claims 10^10 pixels
    (d / "blank.png").write_bytes(_png(Image.new("L", (30, 30), 255)))
    (d / "garbage.onnx").write_bytes(b"not onnx at all")
    (d / "existing.onnx").write_bytes(b"")
    (d / "noimgs").mkdir()
    (d / "noimgs" / "readme.txt").write_text("x")
    (d / "empty").mkdir()
    (d / "corrupt").mkdir()
    (d / "corrupt" / CHECKPOINT).write_bytes((complete_run / CHECKPOINT).read_bytes()[:5000])
    return d


OTHER_COMMANDS = [  # {run} = a finished run, {j} = the junk directory
    "predict {j}/nope {j}/ok.png", "predict {j}/empty {j}/ok.png", "predict {j}/corrupt {j}/ok.png",
    "predict {run} {j}/text.png", "predict {run} {j}/zero.png", "predict {run} {j}/missing.png",
    "predict {run} {j}/noimgs", "predict {run} {j}/trunc.png", "predict {run} {j}/trunc.tif",
    "predict {run} {j}/bomb.png", "predict {run} {j}/blank.png", "predict {run} {j}/ok.png --top-k 0",
    "predict {run} {j}/ok.png --top-k abc", "predict {j}/garbage.onnx {j}/ok.png",
    "predict {run} {j}/ok.png --save-preprocessed {j}/text.png", "predict {run}",
    "export {j}/nope", "export {j}/empty", "export {j}/corrupt", "export {run} --format tflite",
    "export {run} --out {j}/existing.onnx", "export {run} --out {j}/no-dir/m.onnx",
    "export {run} --out {j}/model.png", "export {run} --data-dir {j}/no-dir", "export {run} --out {j}/new.onnx",
    "show {j}/nope", "show {j}/corrupt", "show {run} --index abc", "show {run} --image {j}/text.png",
    "show {run} --image {j}/zero.png", "show {run} --image {j}/missing.png",
    "show {run} --image {j}/ok.png --index 3", "show {run} --image {j}/ok.png --out {j}/text.png",
    "show {run} --image {j}/blank.png", "show {run} --index 5",
    "serve {j}/nope", "serve {j}/corrupt", "serve {run} --port -1", "serve {run} --port 70000",
    "serve {run} --port abc", "serve {run} --host no.such.host.invalid --port 0",
    "serve {run} --max-upload-mb 0", "serve {run} --max-upload-mb nan", "serve {run} --max-upload-mb inf",
    "export-csv {j}/corrupt", "export-csv {run} --out {j}/text.png",
    "compare {j}/nope", "compare {j}/empty", "compare {j}/corrupt", "compare {run} --plot {j}/no-dir/x.png",
    "compare",
]


@pytest.mark.parametrize("line", OTHER_COMMANDS)
def test_other_commands_with_wrong_things(line, complete_run, junk, capsys, data_env):
    """predict, export, show, serve, compare: one line, exit 1 or 2 (data sets are unreachable
    here, so `export`/`show --index` of a good run fail at loading the test set, also in one line)."""
    argv = line.format(run=complete_run, j=junk).split()
    if argv[0] not in __import__("mnist_cnn.cli", fromlist=["COMMANDS"]).COMMANDS:
        pytest.skip(f"no {argv[0]} command in this version")
    rc, out, err = run_cli(argv, capsys)
    assert rc in (USAGE, RUNTIME), (line, rc, err)
    assert_one_line_error(rc, err, rc, argv)
