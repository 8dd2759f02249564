"""Side-by-side epoch times: the lesson's TF1 program, Keras 3 fit, and `mnist-cnn train --preset seed`.

    make bench-lesson                          # builds .venv-lesson (tensorflow-cpu) on first use
    .venv/bin/python bench/lesson/run.py --epochs 3 --rounds 2 --threads 2,1

All three train the lesson's network with its recipe (Adam 1e-4, batch 100, 550 steps an epoch,
validation every epoch, TensorBoard logs) on the same MNIST arrays, which the project's data chain
writes once to a temporary .npz. Each round runs the programs one after another (A B C A B C ...)
so load from other jobs falls on all of them alike; each program is a fresh process timing its
own epochs (training + validation + logging, as the lesson's timer did; process start, imports
and data loading are not in it). Prints a table and writes
bench/results/lesson-<date>-<host>.json. Standard library only: the TF programs run under
.venv-lesson, mnist-cnn under .venv.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROGRAMS = {
    "lesson_tf1": "lesson's TF1 program (tf.compat.v1 graph + session)",
    "keras_fit": "same network + recipe, Keras 3 model.fit",
    "mnist_cnn": "mnist-cnn train --preset seed",
}
RATIOS = (("lesson_tf1", "mnist_cnn"), ("keras_fit", "mnist_cnn"))
WRITE_NPZ = (
    "import sys, numpy as np\n"
    "from mnist_cnn.data import load_dataset\n"
    "ds = load_dataset('mnist')\n"
    "np.savez(sys.argv[1], **{f'{s}_{k}': getattr(getattr(ds, s), k).numpy()\n"
    "    for s in ('train', 'validation') for k in ('images', 'labels')})\n"
    "print(ds.source)\n"
)


class BenchError(Exception):
    """A failure the driver reports in one line (exit 1)."""


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def positive_int(text: str) -> int:
    values = positive_ints(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one integer >= 1, got {text!r}")
    return values[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/lesson/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs per program per round (default: 3)")
    p.add_argument("--rounds", type=positive_int, default=2,
                   help="times each program runs, interleaved A B C A B C (default: 2)")
    p.add_argument("--threads", type=positive_ints, default=[2],
                   help="thread counts, comma-separated (TF intra- and inter-op threads; torch --threads);"
                        " each round runs every program at each count (default: 2)")
    p.add_argument("--programs", type=lambda s: s.split(","), default=list(PROGRAMS),
                   help=f"comma-separated subset of {','.join(PROGRAMS)} (default: all)")
    p.add_argument("--venv", type=Path, default=ROOT / ".venv", help="the project's venv (default: .venv)")
    p.add_argument("--lesson-venv", type=Path, default=ROOT / ".venv-lesson",
                   help="venv with bench/lesson/requirements.txt (default: .venv-lesson)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: bench/results/lesson-<date>-<host>.json)")
    args = p.parse_args(argv)
    unknown = [name for name in args.programs if name not in PROGRAMS]
    if unknown or not args.programs:
        p.error(f"--programs: unknown {','.join(unknown) or '(empty)'}; choose from {','.join(PROGRAMS)}")
    return args


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per program: stats over every epoch, and over epochs after each run's first (warm-up)."""
    out: dict[str, Any] = {}
    for name, program_runs in runs.items():
        seconds = [e["seconds"] for run in program_runs for e in run["epochs"]]
        later = [e["seconds"] for run in program_runs for e in run["epochs"][1:]]
        out[name] = {"epoch_seconds": stats(seconds),
                     "epoch_seconds_after_first": stats(later) if later else None,
                     "last_validation_accuracy": [run["epochs"][-1]["validation_accuracy"] for run in program_runs]}
    for a, b in RATIOS:
        if a in out and b in out:
            out[f"ratio_{a}_to_{b}"] = out[a]["epoch_seconds"]["median"] / out[b]["epoch_seconds"]["median"]
    return out


def format_table(report: dict[str, Any]) -> str:
    """The printed table: per-epoch seconds per program and thread count, then the ratios."""
    lines = [f"{'threads':>7}  {'program':<52} {'median':>7} {'min':>7} {'max':>7} {'n':>3}  val acc (last epoch)"]
    for threads, summary in report["results"].items():
        for name in PROGRAMS:
            if name not in summary:
                continue
            s, acc = summary[name]["epoch_seconds"], summary[name]["last_validation_accuracy"]
            lines.append(f"{threads:>7}  {PROGRAMS[name]:<52} {s['median']:>7.2f} {s['min']:>7.2f} "
                         f"{s['max']:>7.2f} {s['n']:>3}  {', '.join(f'{a:.4f}' for a in acc)}")
        for a, b in RATIOS:
            if f"ratio_{a}_to_{b}" in summary:
                lines.append(f"{threads:>7}  {'ratio ' + a + ' / ' + b + ' (medians)':<52} "
                             f"{summary[f'ratio_{a}_to_{b}']:>7.2f}x")
    return "\n".join(lines)


def run_logged(cmd: list[str], label: str, env: dict[str, str] | None = None) -> str:
    """Run one program; its stdout, or BenchError naming it with the last stderr line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise BenchError(f"{label} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def epoch_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"epoch"')]


def run_program(name: str, args: argparse.Namespace, threads: int, npz: Path, work: Path) -> dict[str, Any]:
    """One fresh process of `name` for args.epochs epochs: its per-epoch records."""
    tag = f"{name}-t{threads}-{len(list(work.glob(name + '-*')))}"
    started = time.time()
    if name == "mnist_cnn":
        run_logged([str(args.venv / "bin" / "mnist-cnn"), "train", "--preset", "seed", "--epochs", str(args.epochs),
                    "--threads", str(threads), "--out", str(work), "--name", tag, "--no-progress"], tag)
        with open(work / tag / "metrics.csv", newline="") as f:
            epochs = [{"epoch": int(r["epoch"]), "seconds": float(r["seconds"]),
                       "train_accuracy": float(r["train_accuracy"]),
                       "validation_accuracy": float(r["validation_accuracy"])} for r in csv.DictReader(f)]
    else:
        stdout = run_logged([str(args.lesson_venv / "bin" / "python"), str(HERE / f"{name}.py"),
                             "--data", str(npz), "--epochs", str(args.epochs), "--threads", str(threads),
                             "--logdir", str(work / tag)], tag)
        epochs = epoch_lines(stdout)
    if len(epochs) != args.epochs:
        raise BenchError(f"{tag}: expected {args.epochs} epochs, got {len(epochs)}")
    print(f"  {tag}: " + " ".join(f"{e['seconds']:.2f}" for e in epochs) + " s per epoch", flush=True)
    return {"epochs": epochs, "process_seconds": time.time() - started, "load_average": os.getloadavg()}


def package_versions(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = ("import json, sys, importlib.metadata as m\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    versions = json.loads(run_logged([str(python), "-c", code, *names], f"{python} (versions)"))
    versions["python"] = run_logged([str(python), "-c", "import platform; print(platform.python_version())"],
                                    str(python)).strip()
    return versions


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "load_average_start": os.getloadavg()}


def check_venvs(args: argparse.Namespace) -> None:
    needs = {"mnist_cnn": args.venv / "bin" / "mnist-cnn", "lesson_tf1": args.lesson_venv / "bin" / "python",
             "keras_fit": args.lesson_venv / "bin" / "python"}
    for name in args.programs:
        if not needs[name].exists():
            hint = "make setup" if name == "mnist_cnn" else "make bench-lesson (it builds .venv-lesson)"
            raise BenchError(f"{needs[name]} not found: run {hint}")


def save(report: dict[str, Any], runs: dict[int, dict[str, list]], out: Path, complete: bool) -> None:
    """Write the report so far (atomically): a bench stopped half-way keeps the runs it finished."""
    report["complete"] = complete
    report["machine"]["load_average_end"] = os.getloadavg()
    report["runs"] = {str(t): v for t, v in runs.items()}
    report["results"] = {str(t): summarize({n: r for n, r in v.items() if r}) for t, v in runs.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(partial, out)


def bench(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    check_venvs(args)
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "epochs": args.epochs, "rounds": args.rounds, "threads": args.threads, "programs": PROGRAMS,
        "versions": {"project": package_versions(args.venv / "bin" / "python", ["torch", "mnist-cnn", "numpy"])}}
    if {"lesson_tf1", "keras_fit"} & set(args.programs):
        report["versions"]["lesson"] = package_versions(args.lesson_venv / "bin" / "python",
                                                        ["tensorflow-cpu", "keras", "numpy"])
    runs: dict[int, dict[str, list]] = {t: {name: [] for name in args.programs} for t in args.threads}
    with tempfile.TemporaryDirectory(prefix="bench-lesson-") as tmp:
        work, npz = Path(tmp), Path(tmp) / "mnist.npz"
        report["data_source"] = run_logged([str(args.venv / "bin" / "python"), "-c", WRITE_NPZ, str(npz)],
                                           "writing MNIST .npz").strip()
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for t in args.threads:
                for name in args.programs:
                    runs[t][name].append(run_program(name, args, t, npz, work))
                    save(report, runs, out, complete=False)
    save(report, runs, out, complete=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or ROOT / "bench" / "results" / (
        f"lesson-{datetime.now().strftime('%Y-%m-%d-%H%M')}-{socket.gethostname()}.json")
    try:
        report = bench(args, out)
    except (BenchError, OSError) as exc:
        print(f"bench-lesson: {exc}", file=sys.stderr)
        return 1
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cpus']} CPUs, load average {m['load_average_start'][0]:.1f} -> "
          f"{m['load_average_end'][0]:.1f}; per-epoch seconds over {args.rounds} rounds x {args.epochs} epochs")
    print(format_table(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
