"""notebooks/lesson.ipynb: its text twin is in sync, the committed copy carries every figure, and
it executes end to end from a clean kernel on real MNIST with short parameters (slow)."""
from __future__ import annotations

import shutil

import nbformat
import pytest

from notebook_exec import NOTEBOOK, TWIN, execute, inject_parameters, twin_text

from mnist_cnn.data import sources

# Short settings for CI: one epoch of the lesson's recipe on all 55,000 images, the three other
# recipes one epoch each on 2,000 images.
# One thread: two on a busy 2-core machine was measured 9x slower (391 s vs 43 s per seed epoch).
CI_PARAMETERS = {"epochs": 1, "compare_epochs": 1, "compare_subset": 2000, "threads": 1}
# Cells whose output must be a figure, found by what they call.
FIGURE_CALLS = ("plot_digits(", "plot_filters(", "plot_history(", "plot_scalars(", "plot_confusion_matrix(",
                "plot_worst_mistakes(", "plt.subplots(")


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def text_of(cell) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                   for o in cell.get("outputs", []))


def check_outputs(nb) -> None:
    """Every cell ran in order without error; figure cells show a figure; the lesson's lines appear."""
    cells = code_cells(nb)
    counts = [c.execution_count for c in cells]
    assert None not in counts and counts == sorted(counts), f"not executed top to bottom: {counts}"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    stderr = [o.text for c in cells for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not any("Traceback" in s for s in stderr), stderr
    for cell in cells:
        if any(call in cell.source for call in FIGURE_CALLS):
            assert has_image(cell), f"no figure from:\n{cell.source}"
    everything = "\n".join(text_of(c) for c in cells)
    for line in ("- Training-set:\t\t55000", "- Validation-set:\t5000", "Epoch 1 completed : Time usage",
                 "\t- Validation Accuracy:\t0.", "- Accuracy:\t0.", "run-validation-tag-accuracy.csv", "prediction: "):
        assert line in everything, line
    tensorboard = next(c for c in cells if "%tensorboard" in c.source)
    shown = "".join(str(o.get("data", {})) for o in tensorboard.outputs)
    assert "iframe" in shown or "localhost" in shown, f"TensorBoard did not start: {tensorboard.outputs}"
    assert "ERROR" not in text_of(tensorboard)


def test_text_twin_is_in_sync():
    """lesson.py is exactly jupytext's percent-format rendering of lesson.ipynb (fix: jupytext --sync)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert TWIN.read_text() == twin_text(nb), "run: .venv/bin/jupytext --sync notebooks/lesson.ipynb"


def test_committed_notebook_shows_every_figure():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "epochs =" in parameters[0].source
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert all("epochs" not in c.source for c in injected), "the saved run must use the parameters cell's epochs"
    check_outputs(nb)
    assert sum(has_image(c) for c in code_cells(nb)) >= 10


@pytest.mark.slow
def test_notebook_executes_on_real_mnist(real_mnist_cache, tmp_path, monkeypatch):
    monkeypatch.setenv(sources.ENV_CACHE, str(real_mnist_cache))
    monkeypatch.setenv(sources.ENV_MIRRORS, "")
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    nb = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    # A clean slate: nothing from the committed run, not even its injected parameters.
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in code_cells(nb):
        cell.outputs, cell.execution_count = [], None
    inject_parameters(nb, CI_PARAMETERS)
    execute(nb, tmp_path, timeout_s=600)  # raises CellExecutionError naming the failing cell
    check_outputs(nb)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["lesson-best", "lesson-default", "lesson-fast", "lesson-seed"]
    assert (tmp_path / "runs" / "lesson-seed" / "csv" / "run-validation-tag-accuracy.csv").is_file()
