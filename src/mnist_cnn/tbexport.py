"""`export-csv`: the CSV files TensorBoard's "CSV" download link gives, read back from event files.

TensorBoard names a downloaded file `run-<run>-tag-<tag>.csv` with columns `Wall time,Step,Value`;
we write the same, one file per writer (train, validation) and scalar tag.
"""
from __future__ import annotations

import csv
from pathlib import Path

from mnist_cnn.errors import UsageError
from mnist_cnn.runs import is_ensemble_run, member_dirs


def read_scalars(log_dir: Path) -> dict[str, list[tuple[float, int, float]]]:
    """{tag: [(wall_time, step, value), ...]} from one writer's event files, TensorBoard's way."""
    # At first use: TensorBoard's reader costs ~1 s to import, and `export-csv --help` needs none of it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # size_guidance 0 = keep every event (TensorBoard's UI samples scalars down to 1,000).
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def run_writers(run_dir: str | Path) -> list[Path]:
    """The writer folders of a run (train/, validation/, ...): those holding event files; an
    ensemble run's are its members' (members/1/train/, ...)."""
    run_dir = Path(run_dir)
    folders = [run_dir, *member_dirs(run_dir)] if is_ensemble_run(run_dir) else [run_dir]
    writers = [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir())
               if p.is_dir() and any(p.glob("events.out.tfevents.*"))]
    if not writers:
        raise UsageError(f"{run_dir} holds no TensorBoard event files (expected train/ and validation/)")
    return writers


def writer_name(run_dir: str | Path, writer: Path) -> str:
    """A writer's name as TensorBoard shows it under `--logdir RUN`: "train", or an ensemble
    member's "members/1/train" (with '-' for '/', as a file name)."""
    return writer.relative_to(run_dir).as_posix().replace("/", "-")


def read_run_scalars(run_dir: str | Path) -> dict[str, dict[str, list[tuple[float, int, float]]]]:
    """{writer: {tag: [(wall_time, step, value)]}} for every writer of a run."""
    return {writer_name(run_dir, w): read_scalars(w) for w in run_writers(run_dir)}


def export_csv(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write `run-<writer>-tag-<tag>.csv` for every writer and tag of a run; returns the paths."""
    writers = run_writers(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / "csv"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. --out names an existing file
        raise UsageError(f"cannot make the output directory {out}: {e.strerror or e}") from None
    written = []
    for writer in writers:
        for tag, rows in read_scalars(writer).items():
            path = out / f"run-{writer_name(run_dir, writer)}-tag-{tag.replace('/', '_')}.csv"
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["Wall time", "Step", "Value"])
                w.writerows(rows)
            written.append(path)
    return written
