"""torchrun + DistributedDataParallel: 2 CPU processes (gloo) on localhost train the same model
as one process with the same global batch, only rank 0 writes, and resume works across ranks.

Each launch is a real `python -m torch.distributed.run --nproc-per-node 2 -m mnist_cnn train`
on a tiny image-folder data set, one thread per process (the CI machine has 2 cores).
"""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_folders import write_image_folder
from mnist_cnn import distributed
from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.errors import UsageError
from mnist_cnn.runs import read_json

TESTS = Path(__file__).resolve().parent
# 2 epochs of 11 steps (about 350 training images, global batch 32): enough steps for
# float-order differences to show if the sharding or the gradient averaging were wrong.
TRAIN_ARGS = ["--validation-size", "40", "--epochs", "2", "--batch-size", "32", "--threads", "1",
              "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a single-process reference must not think it is a rank
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def torchrun(*args: str, script: list[str] | None = None, extra_env: dict[str, str] | None = None):
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
              "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    return run(launch + (script or ["-m", "mnist_cnn"]) + list(args), extra_env)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_same_training(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:  # the same steps up to float summation order (measured: max diff ~6e-7)
        torch.testing.assert_close(wa[name], wb[name], atol=2e-5, rtol=1e-4, msg=name)
    # Accuracies are counts: a prediction at a near-tie may flip with the summation order (more
    # likely on some CPUs' kernels than others), so one image of the 40 validation images, and a
    # few of the ~350 training images, may differ; a wrong shard or average moves them far more.
    for ra, rb in zip(metrics(a), metrics(b), strict=True):
        assert ra["train_accuracy"] == pytest.approx(rb["train_accuracy"], abs=0.01)
        assert ra["validation_accuracy"] == pytest.approx(rb["validation_accuracy"], abs=1 / 40 + 1e-6)
        for key in ("train_loss", "validation_loss", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "digits"
    write_image_folder(root, n=460)
    return root


@pytest.fixture(scope="module")
def single(folder) -> Path:
    """The reference: one process (this one, through the CLI: the launches under test are the
    torchrun ones), no torchrun variables, torch's thread count restored afterwards."""
    from mnist_cnn.cli import main

    out = folder.parent / "runs"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(name, raising=False)
        try:
            assert main(["train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(out),
                         "--name", "single", *TRAIN_ARGS]) == 0
        finally:
            torch.set_num_threads(threads)
    return out / "single"


def test_two_processes_match_one_and_only_rank_0_writes(folder, single):
    out = folder.parent / "runs"
    r = torchrun("train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(out), "--name", "ddp",
                 *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = out / "ddp"
    assert_same_training(single, ddp)
    # Rank 0 alone printed and wrote: one copy of each console line, one event file per writer.
    assert r.stdout.count("Epoch 2 completed") == 1 and r.stdout.count("Best validation accuracy") == 1
    assert len(list((ddp / "train").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in out.iterdir()) == ["ddp", "single"]
    assert read_json(ddp / "run.json")["status"] == "complete"
    assert read_json(ddp / "environment.json")["world_size"] == 2
    assert (ddp / "plots" / "curves.png").is_file()
    # The folder data set's class names travel with the model; the run evaluates like any other.
    from mnist_cnn.evaluate import evaluate
    from mnist_cnn.inference import load_classifier

    assert load_classifier(ddp, "cpu").class_names == tuple(f"c{i}" for i in range(10))
    assert evaluate(ddp, "test", device="cpu").accuracy > 0.5


def test_interrupted_two_process_run_resumes_to_the_same_weights(folder, single):
    out = folder.parent / "runs"
    # Stop mid-epoch 2 (step 15 of 22), as SIGTERM would: every rank stops, rank 0 checkpoints.
    r = torchrun("train", "--dataset", "folder", "--data-dir", str(folder), "--out", str(out), "--name", "cut",
                 *TRAIN_ARGS, script=[str(TESTS / "ddp_driver.py")], extra_env={"DDP_DRIVER_STOP_AFTER": "15"})
    assert r.returncode != 0 and "state saved. Resume with" in r.stderr
    cut = out / "cut"
    assert read_json(cut / "run.json")["status"] == "interrupted"
    assert load_checkpoint(cut / "checkpoint.pt")["global_step"] == 15
    r = torchrun("train", "--resume", str(cut), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Resuming") == 1
    assert read_json(cut / "run.json")["status"] == "complete"
    assert_same_training(single, cut)


def test_global_batch_must_divide_among_ranks():
    info = distributed.DistInfo(rank=1, world_size=2, local_rank=1, enabled=True)
    assert distributed.batch_shard(32, info) == slice(16, 32)
    assert distributed.batch_shard(32, distributed.SINGLE) == slice(0, 32)
    with pytest.raises(UsageError, match="batch_size 33 does not divide evenly among 2 processes"):
        distributed.batch_shard(33, info)


def test_without_torchrun_variables_nothing_is_distributed(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init_distributed(torch.device("cpu"))
    assert info == distributed.SINGLE and info.is_main and not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(UsageError, match="RANK 5 is outside"):
        distributed.env_info()
