"""`export-csv`: the CSV files TensorBoard's "CSV" download link gives, read back from event files.

TensorBoard names a downloaded file `run-<run>-tag-<tag>.csv` with columns `Wall time,Step,Value`;
we write the same, one file per writer (train, validation) and scalar tag.
"""
from __future__ import annotations

import csv
from pathlib import Path

from mnist_cnn.errors import UsageError


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
    """The writer folders of a run (train/, validation/, ...): those holding event files."""
    run_dir = Path(run_dir)
    writers = sorted(p for p in run_dir.iterdir() if p.is_dir() and any(p.glob("events.out.tfevents.*"))) \
        if run_dir.is_dir() else []
    if not writers:
        raise UsageError(f"{run_dir} holds no TensorBoard event files (expected train/ and validation/)")
    return writers


def read_run_scalars(run_dir: str | Path) -> dict[str, dict[str, list[tuple[float, int, float]]]]:
    """{writer: {tag: [(wall_time, step, value)]}} for every writer of a run."""
    return {w.name: read_scalars(w) for w in run_writers(run_dir)}


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
            path = out / f"run-{writer.name}-tag-{tag.replace('/', '_')}.csv"
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["Wall time", "Step", "Value"])
                w.writerows(rows)
            written.append(path)
    return written
