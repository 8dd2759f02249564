"""Execute notebooks/lesson.ipynb from a clean kernel, papermill-style parameters injected.

Used by tests/test_notebook.py (short parameters, in a temporary folder) and, as a script, to
refresh the committed outputs in place (the notebook's own parameters, real MNIST):

    .venv/bin/python tests/notebook_exec.py            # rewrites notebooks/lesson.ipynb and lesson.py
    .venv/bin/python tests/notebook_exec.py --out X.ipynb epochs=1 compare_epochs=1

TensorBoard servers the notebook's `%tensorboard` starts outlive the kernel; they are stopped
here by pid (only those started from the notebook's working directory).
"""
from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "lesson.ipynb"
TWIN = ROOT / "notebooks" / "lesson.py"
TWIN_FORMAT = "py:percent"


def inject_parameters(nb: Any, parameters: dict[str, Any]) -> None:
    """Insert a cell tagged `injected-parameters` after the cell tagged `parameters` (papermill's way)."""
    import nbformat

    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "# Parameters injected for this execution\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))


def execute(nb: Any, cwd: Path, timeout_s: int = 900) -> float:
    """Run every cell in a fresh python3 kernel with `cwd` as its folder; raises on the first
    failing cell (nbclient's CellExecutionError). Returns the seconds it took."""
    from nbclient import NotebookClient

    env = dict(os.environ)
    # The kernel's `%tensorboard` runs the `tensorboard` program next to this Python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MPLBACKEND", None)  # the kernel picks its inline backend
    started = time.time()
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(env=env)
    finally:
        stop_tensorboards(cwd)
    return time.time() - started


def stop_tensorboards(cwd: Path) -> list[int]:
    """SIGTERM the TensorBoard servers that `%tensorboard` started with `cwd` as working folder."""
    from tensorboard import manager

    stopped = []
    for info in manager.get_all():
        try:
            started_in = json.loads(base64.b64decode(info.cache_key))["working_directory"]
        except (ValueError, KeyError):
            continue
        if Path(started_in).resolve() == cwd.resolve():
            try:
                os.kill(info.pid, signal.SIGTERM)
                stopped.append(info.pid)
            except ProcessLookupError:
                pass
    return stopped


def twin_text(nb: Any) -> str:
    """The jupytext percent-format text of a notebook, as the paired lesson.py holds it."""
    import jupytext

    return jupytext.writes(nb, fmt=TWIN_FORMAT)


def main(argv: list[str]) -> int:
    import nbformat

    out = NOTEBOOK
    parameters: dict[str, Any] = {}
    args = iter(argv)
    for arg in args:
        if arg == "--out":
            out = Path(next(args)).resolve()
        else:
            key, value = arg.split("=", 1)
            parameters[key] = json.loads(value) if value[:1] in "0123456789-[{tfn\"" else value
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if parameters:
        inject_parameters(nb, parameters)
    seconds = execute(nb, NOTEBOOK.parent)
    nbformat.write(nb, out)
    if out == NOTEBOOK:
        TWIN.write_text(twin_text(nb))
    print(f"executed in {seconds:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
