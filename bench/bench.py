"""Speed benchmark for mnist-cnn (issue #4): `make bench`, or `python bench/bench.py [--quick]`.

Measures side by side in ONE process, so noisy shared machines still give fair ratios:

1. throughput  the seed recipe's training loop (train.py's own `run_steps`: uint8 data as tensors,
               batches by index, channels_last, no per-step host sync) against a plain tutorial loop
               (DataLoader over a TensorDataset of float images, NCHW, `loss.item()` every step),
               same network, optimizer (Adam 1e-4), batch (100) and data-order semantics
               (a fresh random permutation each epoch). Runs alternate; medians of >= 3 repeats.
2. time to 99% wall-clock training seconds until TEST accuracy first reaches 99.0%, over 5 seeds,
               for the `fast` and `default` presets (test accuracy is measured after each epoch,
               outside the clock; data loading is timed separately).
3. inference   images/s on the 10,000 test images at batch 1000 and single-image latency
               (median, p99 over >= 1000 calls) for PyTorch and ONNX Runtime.
4. memory      peak RSS of a whole `mnist-cnn train --preset fast` process (ru_maxrss of a child).
5. precision   ms per training step of every preset, float32 against `--amp auto` (and, with
               --precision-variants, explicit bf16 or torch.compile), interleaved A B A B, with the
               CPU flags that decided what `auto` means here (precision.py).

--sections runs a subset (e.g. `--sections time_to_99 --presets fast --seeds 5`: issue 22's time to
99%). Time to 99% trains at --amp (default auto: bf16 where the CPU does it natively, as `train`).

Prints a table and writes every figure, with machine, versions and thread counts, to
bench/results/<date>-<host>.json. --quick runs fewer steps and seeds (about a minute).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mnist_cnn import config as cfg
from mnist_cnn import precision
from mnist_cnn.data import load_dataset
from mnist_cnn.inference import loss_and_accuracy, predict_logits, select_device
from mnist_cnn.models import create_model
from mnist_cnn.train import Loop, StepLog, TrainData, run_steps, train_epoch
from mnist_cnn.trainstate import TrainState, make_optimizer, seed_everything

ROOT = Path(__file__).resolve().parent
TARGET_ACCURACY = 0.99
TARGETS = {"seed_speedup": 2.0, "time_to_99_s": 10.0, "inference_images_per_s": 50_000, "latency_median_ms": 1.0}


DEVICE = torch.device("cpu")  # set by --device; data, models and timings live there
AMP = "auto"                  # set by --amp: the precision time to 99% trains at
SECTIONS = ("throughput", "time_to_99", "inference", "memory", "precision")


def now() -> float:
    if DEVICE.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize()
    return time.perf_counter()


# ---------------------------------------------------------------- 1. seed-recipe throughput

def train_data(x_u8: torch.Tensor, y: torch.Tensor) -> TrainData:
    """Training tensors as train.py's loop takes them (no validation split: the bench tests instead)."""
    return TrainData(x_u8, y, x_u8[:0], y[:0], tuple(str(i) for i in range(10)), 0, "bench")


def library_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x_u8: torch.Tensor, y: torch.Tensor,
                  batch: int, steps: int, order: torch.Tensor, channels_last: bool = True) -> float:
    """train.py's hot loop itself (`run_steps`, the seed recipe's step) over the epoch permutation
    `order` (N,) int64. Returns seconds for `steps` optimizer steps."""
    config = cfg.make_config("seed", batch_size=batch, channels_last=channels_last, epochs=1)
    state = TrainState.for_model(config, tuple(str(i) for i in range(10)), model, optimizer, n_train=steps * batch)
    started = now()
    run_steps(state, Loop(train_data(x_u8, y), model), order.to(y.device), StepLog(0), time.time())
    float(state.step_loss.mean())                        # the once-per-epoch read
    return now() - started


def tutorial_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                   steps: int) -> float:
    """The loop most PyTorch tutorials teach. Returns seconds for `steps` optimizer steps."""
    started = now()
    running_loss, correct = 0.0, 0
    for s, (images, labels) in enumerate(loader):
        if s == steps:
            break
        images, labels = images.to(DEVICE), labels.to(DEVICE)   # a no-op on the CPU
        optimizer.zero_grad()
        outputs = model(images)
        loss = F.cross_entropy(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()                      # a host sync every step
        correct += (outputs.argmax(1) == labels).sum().item()
    return now() - started


def bench_throughput(ds: Any, steps: int, repeats: int) -> dict[str, Any]:
    seed_cfg = cfg.make_config("seed")
    batch = seed_cfg.batch_size
    x_float = ds.train.images.float() / 255.0            # tutorials convert once (ToTensor), outside the loop
    x_u8, y = ds.train.images.to(DEVICE), ds.train.labels.to(DEVICE)
    ours, theirs, acc = [], [], {}
    cpu: dict[str, list[float]] = {"library": [], "tutorial": []}
    for r in range(repeats):
        torch.manual_seed(r)
        model = create_model("seed").to(DEVICE, memory_format=torch.channels_last)
        optimizer = make_optimizer(seed_cfg, model)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(r))
        cpu_started = time.process_time()
        ours.append(library_steps(model, optimizer, x_u8, y, batch, steps, order))
        cpu["library"].append(time.process_time() - cpu_started)
        acc["library"] = loss_and_accuracy(model, ds.test.images, ds.test.labels)[1]

        torch.manual_seed(r)
        model = create_model("seed").to(DEVICE)           # NCHW, the tutorial default
        optimizer = torch.optim.Adam(model.parameters(), lr=seed_cfg.lr)
        loader = DataLoader(TensorDataset(x_float, ds.train.labels), batch_size=batch, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(r))
        cpu_started = time.process_time()
        theirs.append(tutorial_steps(model, optimizer, loader, steps))
        cpu["tutorial"].append(time.process_time() - cpu_started)
        acc["tutorial"] = loss_and_accuracy(model, ds.test.images, ds.test.labels, channels_last=False)[1]
    images = steps * batch
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    epoch_steps = len(y) // batch
    return {
        "steps_per_repeat": steps, "repeats": repeats, "batch_size": batch,
        "library_seconds": ours, "tutorial_seconds": theirs,
        "library_images_per_s": images / ours_s, "tutorial_images_per_s": images / theirs_s,
        "library_seconds_per_epoch": ours_s / steps * epoch_steps,
        "tutorial_seconds_per_epoch": theirs_s / steps * epoch_steps,
        "speedup": theirs_s / ours_s,
        "library_cpu_seconds": cpu["library"], "tutorial_cpu_seconds": cpu["tutorial"],
        "speedup_cpu_seconds": statistics.median(cpu["tutorial"]) / statistics.median(cpu["library"]),
        # Same math, different rounding and data order: after the same steps both nets should
        # sit at about the same test accuracy.
        "test_accuracy_after_last_repeat": acc,
    }


# ---------------------------------------------------------------- 2. time to 99% test accuracy

def time_to_target(preset: str, ds: Any, seed: int) -> dict[str, Any]:
    """Train `preset` with train.py's own `train_epoch`, timing only the training steps; test
    after each epoch (outside the clock) with the weights validation would use (EMA when on)."""
    config = cfg.make_config(preset, seed=seed, amp=precision.resolve_amp(AMP, preset, DEVICE))
    seed_everything(config.seed)
    state = TrainState.create(config, ds.class_names, ds.train.images.shape[1], len(ds.train), DEVICE)
    loop = Loop(train_data(ds.train.images.to(DEVICE), ds.train.labels.to(DEVICE)), state.model)
    state.model.train()
    seconds, cpu_seconds, curve, reached = 0.0, 0.0, [], None
    while state.epoch < config.epochs:
        started, cpu_started = now(), time.process_time()
        train_epoch(state, loop)
        seconds += now() - started
        cpu_seconds += time.process_time() - cpu_started
        state.advance_epoch()
        with precision.autocast(DEVICE, config.amp == "bf16"):  # as `mnist-cnn evaluate` would
            accuracy = loss_and_accuracy(state.eval_model, ds.test.images, ds.test.labels)[1]
        curve.append({"epoch": state.epoch, "train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
                      "test_accuracy": accuracy})
        if reached is None and accuracy >= TARGET_ACCURACY:
            reached = {"epoch": state.epoch, "train_seconds": seconds, "train_cpu_seconds": cpu_seconds}
    return {"seed": seed, "reached": reached, "curve": curve, "final_test_accuracy": curve[-1]["test_accuracy"],
            "model": state.eval_model}


def bench_time_to_99(preset: str, ds: Any, seeds: int) -> dict[str, Any]:
    runs = [time_to_target(preset, ds, seed) for seed in range(seeds)]
    made = [r["reached"]["train_seconds"] for r in runs if r["reached"]]
    made_cpu = [r["reached"]["train_cpu_seconds"] for r in runs if r["reached"]]
    finals = [r["final_test_accuracy"] for r in runs]
    config = cfg.make_config(preset)
    return {
        "preset": preset, "model": config.model, "epochs": config.epochs, "batch_size": config.batch_size,
        "amp": precision.resolve_amp(AMP, preset, DEVICE), "seeds": seeds, "seeds_reaching_99": len(made),
        "seconds_mean": statistics.mean(made) if made else None,
        "seconds_std": statistics.stdev(made) if len(made) > 1 else 0.0,
        "seconds_max": max(made) if made else None,
        # CPU seconds of this process: robust to other load. With --threads 1 it is an upper
        # bound on the wall time the same work takes alone on one idle core.
        "cpu_seconds_mean": statistics.mean(made_cpu) if made_cpu else None,
        "cpu_seconds_max": max(made_cpu) if made_cpu else None,
        "final_test_accuracy_mean": statistics.mean(finals),
        "final_test_accuracy_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "runs": [{k: v for k, v in r.items() if k != "model"} for r in runs],
        "_model": runs[-1]["model"],
    }


# ---------------------------------------------------------------- 3. inference

def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples_s)
    return {"latency_median_ms": statistics.median(ms), "latency_p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def time_backend(run_batch: Callable[[torch.Tensor], Any], test_u8: torch.Tensor, repeats: int,
                 latency_calls: int) -> dict[str, Any]:
    run_batch(test_u8[:1000])                            # warm-up: first calls allocate and pick kernels
    passes = []
    for _ in range(repeats):
        started = now()
        for i in range(0, len(test_u8), 1000):
            run_batch(test_u8[i:i + 1000])
        passes.append(now() - started)
    for i in range(20):
        run_batch(test_u8[i:i + 1])
    calls = []
    for i in range(latency_calls):
        one = test_u8[i % len(test_u8)].unsqueeze(0)     # (1, 1, 28, 28) uint8
        started = now()
        run_batch(one)
        calls.append(now() - started)
    return {"images_per_s": len(test_u8) / statistics.median(passes), "batch_size": 1000,
            "pass_seconds": passes, "latency_calls": latency_calls, **percentiles(calls)}


def bench_inference(model: torch.nn.Module, name: str, ds: Any, repeats: int, latency_calls: int,
                    workdir: Path) -> dict[str, Any]:
    model = model.eval()
    test_u8 = ds.test.images
    out: dict[str, Any] = {"model": name}
    # The library's own path: uint8 -> float/255 -> channels_last -> model, under inference_mode.
    out["pytorch"] = time_backend(lambda b: predict_logits(model, b, batch_size=1000), test_u8, repeats,
                                  latency_calls)
    try:
        import onnxruntime as ort

        from mnist_cnn.export import export_onnx
    except ImportError as e:
        out["onnxruntime"] = {"skipped": f"{e}"}
        return out
    path = workdir / f"{name}.onnx"
    export_onnx(copy.deepcopy(model).cpu(), path, class_names=ds.class_names, check_images=test_u8[:512], force=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run_onnx(batch_u8: torch.Tensor) -> Any:
        return session.run(None, {input_name: batch_u8.float().div_(255.0).numpy()})[0]

    out["onnxruntime"] = time_backend(run_onnx, test_u8, repeats, latency_calls)
    out["onnxruntime"]["version"] = ort.__version__
    return out


# ---------------------------------------------------------------- 4. peak memory of a training run

def bench_training_process(preset: str, workdir: Path, epochs: int | None, threads: int = 0) -> dict[str, Any]:
    """Run `mnist-cnn train` in a child process; its peak RSS and wall time, imports included."""
    command = [sys.executable, "-m", "mnist_cnn", "train", "--preset", preset, "--out", str(workdir),
               "--name", f"rss-{preset}", "--force", "--device", DEVICE.type]
    if epochs:
        command += ["--epochs", str(epochs)]
    if threads:
        command += ["--threads", str(threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = now()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = now() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, max over children so far
    from mnist_cnn.runs import read_metrics_csv

    history = read_metrics_csv(workdir / f"rss-{preset}" / "metrics.csv")
    return {"command": " ".join(command[1:]), "peak_rss_mib": peak_kib / 1024, "wall_seconds": wall,
            # train()'s own epoch times: steps + validation + logging, checkpoints excluded
            "epoch_seconds": [r.seconds for r in history],
            "validation_accuracy": [r.validation_accuracy for r in history],
            "note": "" if peak_kib > before else "peak equals an earlier child's; figure is an upper bound"}


# ---------------------------------------------------------------- 5. precision and compilation

def precision_variant(name: str, preset: str) -> tuple[str, bool]:
    """A --precision-variants entry -> (amp "off"/"bf16", compiled). "auto" is what `train` would
    pick here; "bf16" forces bf16 autocast even where it is emulated (to show what that costs)."""
    amp, _, extra = name.partition("+")
    if amp not in ("fp32", "auto", "bf16") or extra not in ("", "compile"):
        raise SystemExit(f"bench: unknown precision variant {name!r}; use fp32, auto or bf16, each optionally +compile")
    resolved = {"fp32": "off", "bf16": "bf16"}.get(amp) or precision.resolve_amp("auto", preset, DEVICE)
    return resolved, extra == "compile"


def step_timer(preset: str, ds: Any, amp: str, compiled: bool, steps: int, rounds: int):
    """A function timing `steps` of `preset`'s real training step (train.py's `run_steps`: its
    augmentation, EMA and schedule) per call, on its own model; and the warm-up seconds (the
    compile time when compiled)."""
    config = cfg.make_config(preset, seed=0, amp=amp, epochs=rounds + 1)
    seed_everything(0)
    state = TrainState.for_model(config, ds.class_names, *_model_and_optimizer(config, ds), n_train=steps * config.batch_size)
    step_model = torch.compile(state.model) if compiled else state.model
    loop = Loop(train_data(ds.train.images.to(DEVICE), ds.train.labels.to(DEVICE)), step_model)
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    state.model.train()

    def run() -> float:
        started = now()
        run_steps(state, loop, order, StepLog(0), time.time())
        float(state.step_loss.mean())
        state.advance_epoch()
        return now() - started

    warm_up = run()  # allocator, kernel choice, and torch.compile's compiling when compiled
    return run, warm_up


def _model_and_optimizer(config: cfg.TrainConfig, ds: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = create_model(config.model, num_classes=len(ds.class_names), in_channels=ds.train.images.shape[1],
                         depth=config.depth, width=config.width).to(DEVICE, memory_format=torch.channels_last)
    return model, make_optimizer(config, model)


def bench_precision(ds: Any, presets: list[str], variants: list[str], steps: int, rounds: int) -> dict[str, Any]:
    """ms per training step of each preset under each variant, interleaved (A B A B ...)."""
    support = precision.bf16_support(DEVICE)
    rows = []
    for preset in presets:
        chosen = {v: precision_variant(v, preset) for v in variants}
        timers = {v: step_timer(preset, ds, amp, compiled, steps, rounds) for v, (amp, compiled) in chosen.items()}
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for v in variants:
                seconds[v].append(timers[v][0]())
        ms = {v: 1000 * statistics.median(t) / steps for v, t in seconds.items()}
        rows.append({"preset": preset, "steps_per_round": steps, "rounds": rounds,
                     "amp": {v: amp for v, (amp, _) in chosen.items()},
                     "ms_per_step": ms, "seconds_per_round": seconds,
                     "warm_up_seconds": {v: t[1] for v, t in timers.items()},
                     "ratio_to_first": {v: ms[variants[0]] / ms[v] for v in variants}})
        print(f"  {preset}: " + ", ".join(f"{v} {ms[v]:.1f} ms" for v in variants), flush=True)
    return {"decided_by": support.as_dict(), "variants": variants, "presets": rows}


# ---------------------------------------------------------------- report

def machine_info() -> dict[str, Any]:
    import numpy

    from mnist_cnn import __version__

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"mnist_cnn": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                "numpy": numpy.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_start": os.getloadavg(), "versions": versions}


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    if "throughput" in results:
        t = results["throughput"]
        rows.append(("seed recipe, library loop (channels_last, tensors)",
                     f"{t['library_images_per_s']:,.0f} img/s, {t['library_seconds_per_epoch']:.2f} s/epoch"))
        rows.append(("seed recipe, tutorial loop (DataLoader, NCHW, .item())",
                     f"{t['tutorial_images_per_s']:,.0f} img/s, {t['tutorial_seconds_per_epoch']:.2f} s/epoch"))
        rows.append(("  speedup (target >= 2x)", f"{t['speedup']:.2f}x wall, {t['speedup_cpu_seconds']:.2f}x CPU-seconds"))
    for r in results.get("time_to_99", []):
        if r["seconds_mean"] is None:
            when = "never"
        else:
            when = (f"{r['seconds_mean']:.2f} +- {r['seconds_std']:.2f} s (max {r['seconds_max']:.2f}; "
                    f"CPU {r['cpu_seconds_mean']:.2f}, max {r['cpu_seconds_max']:.2f})")
        rows.append((f"time to 99% test, preset {r['preset']} ({r['model']}, {r['epochs']} ep, amp {r['amp']})",
                     f"{when}, {r['seeds_reaching_99']}/{r['seeds']} seeds; final "
                     f"{100 * r['final_test_accuracy_mean']:.2f} +- {100 * r['final_test_accuracy_std']:.2f}%"))
    rows.append(("data loading (load_dataset mnist)", f"{results['data_loading_seconds']:.2f} s"))
    for inf in results.get("inference", []):
        for backend in ("pytorch", "onnxruntime"):
            b = inf.get(backend, {})
            if "images_per_s" in b:
                rows.append((f"inference {inf['model']} {backend}",
                             f"{b['images_per_s']:,.0f} img/s @1000; 1 image {b['latency_median_ms']:.3f} ms "
                             f"median, {b['latency_p99_ms']:.3f} ms p99"))
    if "training_process" in results:
        m = results["training_process"]
        rows.append((f"peak RSS, {m['command'].split(' --out')[0]}",
                     f"{m['peak_rss_mib']:.0f} MiB; process {m['wall_seconds']:.1f} s wall, epochs "
                     + " + ".join(f"{s:.2f}" for s in m.get("epoch_seconds", [])) + " s"))
    rows += precision_rows(results.get("precision"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def precision_rows(p: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not p:
        return []
    d = p["decided_by"]
    rows = [("precision: what decided auto", f"{d['reason']} ({d['source']}: {d['cpu_flags']}; torch dispatch "
                                             f"{d['cpu_capability'] or 'n/a'})")]
    for r in p["presets"]:
        first = p["variants"][0]
        rows.append((f"  ms per step, preset {r['preset']}",
                     ", ".join(f"{v}{'=' + r['amp'][v] if v.startswith('auto') else ''} {r['ms_per_step'][v]:.1f}"
                               + ("" if v == first else f" ({r['ratio_to_first'][v]:.2f}x)") for v in p["variants"])))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and seeds (about a minute); a smoke test")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds for time-to-99 (default 5, quick 2)")
    parser.add_argument("--presets", default=None,
                        help="comma-separated presets for time-to-99, the first is the target's (default fast,default; quick: fast)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train and infer")
    parser.add_argument("--amp", default="auto", choices=("auto", "off", "bf16"),
                        help="precision of the time-to-99 training runs, as `train --amp` (default auto)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated parts to run (default all: {','.join(SECTIONS)})")
    parser.add_argument("--precision-presets", default=None,
                        help="comma-separated presets of the precision table (default every preset; quick: seed,fast)")
    parser.add_argument("--precision-variants", default="fp32,auto",
                        help="comma-separated, the first is the ratios' base: fp32, auto, bf16 (forced, even where "
                             "emulated), each optionally +compile, e.g. fp32,auto,fp32+compile,auto+compile")
    parser.add_argument("--precision-steps", type=int, default=None,
                        help="training steps per timed round of the precision table (default 50, quick 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="directory for the JSON results")
    args = parser.parse_args(argv)
    args.sections = args.sections.split(",")
    if unknown := set(args.sections) - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    from mnist_cnn.errors import MnistCnnError

    global DEVICE, AMP
    try:
        DEVICE = select_device(args.device)
        AMP = args.amp
        precision.resolve_amp(AMP, "default", DEVICE)  # bf16 where it is emulated: refused now, not mid-bench
    except MnistCnnError as e:
        parser.error(str(e))
    return args


def run_sections(args: argparse.Namespace, ds: Any, results: dict[str, Any]) -> None:
    quick, seeds = args.quick, args.seeds or (2 if args.quick else 5)
    if "throughput" in args.sections:
        print("throughput of the seed recipe ...", flush=True)
        results["throughput"] = bench_throughput(ds, steps=150 if quick else 550, repeats=3)
    models: dict[str, torch.nn.Module] = {}
    if "time_to_99" in args.sections:
        print(f"time to 99% test accuracy (amp {AMP}) ...", flush=True)
        presets = args.presets.split(",") if args.presets else ["fast"] if quick else ["fast", "default"]
        ttt = [bench_time_to_99(p, ds, seeds) for p in presets]
        models = {r["model"]: r.pop("_model") for r in ttt}
        results["time_to_99"] = ttt
    if "inference" in args.sections:
        print("inference ...", flush=True)
        if not models:  # untrained networks time the same
            models = {name: create_model(name).to(DEVICE) for name in ("seed", "fast")}
        with tempfile.TemporaryDirectory(prefix="mnist-cnn-bench-") as tmp:
            results["inference"] = [bench_inference(models[name], name, ds, repeats=3, latency_calls=1000,
                                                    workdir=Path(tmp)) for name in models]
    if "memory" in args.sections:
        print("peak memory of a training run ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="mnist-cnn-bench-") as tmp:
            results["training_process"] = bench_training_process("fast", Path(tmp), epochs=None, threads=args.threads)
    if "precision" in args.sections:
        print("precision: ms per training step, interleaved ...", flush=True)
        presets = (args.precision_presets.split(",") if args.precision_presets
                   else ["seed", "fast"] if quick else cfg.preset_names())
        results["precision"] = bench_precision(ds, presets, args.precision_variants.split(","),
                                               args.precision_steps or (5 if quick else 50), rounds=2 if quick else 3)


def targets_met(results: dict[str, Any]) -> dict[str, bool]:
    met = {}
    if "throughput" in results:
        met["seed_speedup"] = results["throughput"]["speedup"] >= TARGETS["seed_speedup"]
    if results.get("time_to_99"):
        fast = results["time_to_99"][0]
        met["time_to_99_s"] = (fast["seeds_reaching_99"] == fast["seeds"] and fast["seconds_max"] is not None
                               and fast["seconds_mean"] <= TARGETS["time_to_99_s"])
    backends = [inf[b] for inf in results.get("inference", []) for b in ("pytorch", "onnxruntime")
                if "images_per_s" in inf.get(b, {})]
    if backends:
        met["inference_images_per_s"] = max(b["images_per_s"] for b in backends) >= TARGETS["inference_images_per_s"]
        met["latency_median_ms"] = min(b["latency_median_ms"] for b in backends) < TARGETS["latency_median_ms"]
    return met


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
                               "device": str(DEVICE), "amp": AMP, "sections": args.sections,
                               "machine": machine_info(), "targets": TARGETS}
    print(f"mnist-cnn bench on {results['machine']['cpu']} ({results['machine']['cpus']} CPUs, "
          f"{torch.get_num_threads()} torch threads), load average {results['machine']['load_average_start']}",
          flush=True)
    started = now()
    ds = load_dataset("mnist")
    results["data_loading_seconds"] = now() - started
    run_sections(args, ds, results)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["bench_seconds"] = now() - started
    results["targets_met"] = targets_met(results)
    print()
    print(table(results))
    print(f"targets met: {results['targets_met']}  (bench took {results['bench_seconds']:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%d-%H%M")
    path = args.out / f"{stamp}-{socket.gethostname()}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
