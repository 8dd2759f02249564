"""Speed work (issue #4) must not change the math, and the GPU-only options must fail clearly on CPU.

The bench itself (bench/bench.py) is a script, not a test; here its two training loops are run on
synthetic data to show the library loop and the tutorial loop compute the same thing.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mnist_cnn import config as cfg
from mnist_cnn.cli import main
from mnist_cnn.models import count_parameters, create_model
from mnist_cnn.train import train_step
from mnist_cnn.trainstate import make_optimizer
from synthetic import toy_dataset

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("mnist_cnn_bench", ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fused_adam_is_the_same_update_as_the_per_tensor_loop():
    torch.manual_seed(0)
    fused_model, loop_model = create_model("seed"), create_model("seed")
    loop_model.load_state_dict(fused_model.state_dict())
    fused = make_optimizer(cfg.make_config("default"), fused_model)
    assert fused.defaults["fused"] is True
    loop = torch.optim.Adam(loop_model.parameters(), lr=fused.defaults["lr"], foreach=False)
    data = toy_dataset(64, 1, 1).train
    x, y = data.images.float() / 255, data.labels
    for _ in range(10):
        train_step(fused_model, fused, x, y)
        train_step(loop_model, loop, x, y)
    worst = max((a - b).abs().max().item() for a, b in zip(fused_model.parameters(), loop_model.parameters()))
    assert worst < 1e-5, worst          # float rounding only; lr 3e-3 x 10 steps moves weights ~3e-2


def test_library_loop_and_tutorial_loop_compute_the_same_training():
    """Same init and the same batches (the DataLoader's shuffled order, replayed by index), so
    channels_last + fused Adam + tensor indexing vs DataLoader + NCHW differ only in rounding."""
    bench = load_bench()
    data = toy_dataset(400, 1, 1).train
    seed_cfg = cfg.make_config("seed")
    torch.manual_seed(3)
    ours = create_model("seed").to(memory_format=torch.channels_last)
    theirs = create_model("seed")
    theirs.load_state_dict(ours.state_dict())
    start = [p.detach().clone() for p in theirs.parameters()]

    def loader(*tensors: torch.Tensor) -> DataLoader:
        return DataLoader(TensorDataset(*tensors), batch_size=100, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(7))

    order = torch.cat([i for (i,) in loader(torch.arange(len(data.labels)))])  # the order it will draw
    bench.library_steps(ours, make_optimizer(seed_cfg, ours), data.images, data.labels, 100, 4, order)
    loader = loader(data.images.float() / 255, data.labels)
    bench.tutorial_steps(theirs, torch.optim.Adam(theirs.parameters(), lr=seed_cfg.lr), loader, 4)
    moved = max((p - s).abs().max().item() for p, s in zip(theirs.parameters(), start))
    assert moved > 1e-4                 # the steps really trained (Adam moves ~lr per step)
    # Adam divides by the gradient's size, so where a gradient is near zero another kernel's rounding
    # can move a weight by up to lr a step: almost every weight agrees, and so do the outputs.
    pairs = [(a.detach(), b.detach()) for a, b in zip(ours.parameters(), theirs.parameters())]
    agree = sum(((a - b).abs() < 1e-6).sum().item() for a, b in pairs) / sum(a.numel() for a, _ in pairs)
    assert agree > 0.999, agree
    x = data.images[:200].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x.contiguous(memory_format=torch.channels_last)), theirs.eval()(x),
                                   rtol=1e-4, atol=1e-4)


def test_fast_preset_uses_the_fast_network():
    config = cfg.make_config("fast")
    assert config.model == "fast" and config.preset == "fast"
    model = create_model("fast")
    assert count_parameters(model) == 215_250
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when there is no GPU")
def test_device_cuda_without_a_gpu_is_a_one_line_usage_error(tmp_path, capsys):
    code = main(["train", "--device", "cuda", "--epochs", "1", "--out", str(tmp_path), "--name", "r"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["mnist-cnn: error: device cuda was asked for, but no CUDA GPU is available"]


def test_train_help_lists_the_speed_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "--amp {auto,off,bf16}" in out and "--compile {auto,on,off}" in out and "fast" in out


def test_lesson_step_bench_prints_its_table_and_saves_json(tmp_path):
    """bench/lesson_step.py (issue 22, item 6) on its uncompiled variants, two steps a round."""
    script = str(ROOT / "bench" / "lesson_step.py")
    variants = ["library", "bare", "nchw", "threads-1"]
    done = subprocess.run([sys.executable, script, "--variants", ",".join(variants), "--rounds", "1", "--steps", "2",
                           "--threads", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert table[0].split() == ["variant", "ms/step", "vs", "library"]
    assert [line.split()[0] for line in table[1:5]] == variants and table[1].endswith("1.00x")
    (saved,) = tmp_path.glob("lesson-step-*.json")
    result = json.loads(saved.read_text())
    assert set(result["ms_per_step"]) == set(variants) and result["ratio_to_first"]["library"] == 1.0
    assert all(len(seconds) == 1 and seconds[0] > 0 for seconds in result["round_seconds"].values())
    refused = subprocess.run([sys.executable, script, "--variants", "library,turbo"], capture_output=True, text=True)
    assert refused.returncode == 2 and "unknown variant(s) turbo" in refused.stderr.splitlines()[-1]


def test_step_windows_bench_prints_its_table_and_saves_every_step(tmp_path):
    script = str(ROOT / "bench" / "step_windows.py")
    done = subprocess.run([sys.executable, script, "--preset", "fast", "--steps", "60", "--threads", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("fast: 60 steps, mean") and lines[1].split()[:2] == ["window", "seconds"]
    assert [line.split()[0] for line in lines[2:5]] == ["20", "50", "saved"]  # windows longer than the run left out
    (saved,) = tmp_path.glob("step-windows-*.json")
    result = json.loads(saved.read_text())
    assert len(result["step_ms"]) == 60 and all(ms > 0 for ms in result["step_ms"])
    twenty = result["windows"]["20"]
    assert twenty["windows"] == 3 and twenty["min_ms"] <= result["mean_ms"] <= twenty["max_ms"]
    refused = subprocess.run([sys.executable, script, "--steps", "5"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--steps must be at least 20" in refused.stderr
