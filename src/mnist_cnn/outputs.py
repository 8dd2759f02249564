"""Output folders that commands own (RUN/evaluation/, RUN/show/): ours to overwrite, nobody else's.

Each folder keeps a manifest of the files our commands wrote there. A file we are about to
write is replaced only when it is missing or listed in that manifest, so re-running a command
refreshes its own figures but never clobbers a file a person put in the same place.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from mnist_cnn.errors import UsageError
from mnist_cnn.fileio import atomic_write_bytes

MANIFEST = ".mnist-cnn-outputs.json"


class OutputDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"{self.path} exists and is not a directory")
        self.owned: set[str] = set()
        manifest = self.path / MANIFEST
        if manifest.is_file():
            try:
                self.owned = set(json.loads(manifest.read_text()))
            except (OSError, ValueError):
                self.owned = set()

    def claim(self, names: Iterable[str]) -> list[Path]:
        """Check every name up front (all or nothing), then record them as ours; returns the paths."""
        names = list(names)
        foreign = [n for n in names if (self.path / n).exists() and n not in self.owned]
        if foreign:
            raise UsageError(f"refusing to overwrite {self.path / foreign[0]}: it was not written by mnist-cnn; "
                             "move it away or choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create {self.path}: {e.strerror}") from None
        self._record(names)
        return [self.path / n for n in names]

    def _record(self, names: Iterable[str]) -> None:
        self.owned.update(names)
        atomic_write_bytes(self.path / MANIFEST, json.dumps(sorted(self.owned), indent=1).encode())

    def clear_event_files(self, suffix: str = "") -> None:
        """Drop TensorBoard event files we wrote before (those ending in `suffix`), so the folder
        shows the latest evaluation of a split, not a pile of them."""
        for p in self.path.glob(f"events.out.tfevents.*{suffix}"):
            if p.name in self.owned:
                p.unlink()
                self.owned.discard(p.name)

    def tensorboard_writer(self, replace: bool = True, suffix: str = ""):
        """A SummaryWriter in this folder whose event file (name ending in `suffix`) is recorded as
        ours; `replace` first drops our earlier event files with that suffix (else TensorBoard shows
        old and new side by side)."""
        from torch.utils.tensorboard import SummaryWriter  # ~1 s import: only when figures go to TensorBoard

        if replace:
            self.clear_event_files(suffix)
        self.claim([])  # creates the folder
        writer = SummaryWriter(str(self.path), filename_suffix=suffix)
        self._record([Path(writer.file_writer.event_writer._file_name).name])  # a fresh, uniquely named file
        return writer
