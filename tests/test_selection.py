"""bench/selection.py end to end on a synthetic 3-class data set of 5,200 images: selection reads the
validation split only and logs every tried recipe; --final reads the test split, once per recipe."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import mnist_cnn.evaluate as evaluate_module
from mnist_cnn.budget import Measured
from conftest import tiny_spec
from mnist_cnn.data.idx import encode_idx
from mnist_cnn.data.registry import DATASETS, KEYS
from synthetic import toy_split

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def select(tmp_path, monkeypatch, data_env):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("mnist_cnn_selection", ROOT / "bench" / "selection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "JSON_LOG", tmp_path / "results" / "selection-log.json")
    monkeypatch.setattr(module, "MD_LOG", tmp_path / "docs" / "accuracy-log.md")
    # 5,200 training images: the fixed 5,000 validation ones plus 200 to train on.
    train, test = toy_split(5200, seed=1, num_classes=3), toy_split(300, seed=2, num_classes=3)
    arrays = {"train_images": train.images[:, 0].numpy(), "train_labels": train.labels.byte().numpy(),
              "test_images": test.images[:, 0].numpy(), "test_labels": test.labels.byte().numpy()}
    data = tmp_path / "data"
    data.mkdir()
    ds = tiny_spec(arrays, name="toyset")
    for key in KEYS:
        (data / ds.file(key).name).write_bytes(encode_idx(arrays[key]))
    monkeypatch.setitem(DATASETS, "toyset", ds)
    splits = []
    real_load_split = evaluate_module.load_split
    monkeypatch.setattr(evaluate_module, "load_split", lambda c, split, d=None: splits.append(split) or real_load_split(c, split, d))
    return module, data, splits


def run(module, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["selection.py", *args])
    return module.main()


def test_selection_reads_validation_only_and_final_reads_test_once(select, tmp_path, monkeypatch):
    """Also: runs are found by name; if the preset changed since one ran, it is refused, not reused
    (one test, so that the probe run is trained once)."""
    module, data, splits = select
    common = ["--preset", "default", "--dataset", "toyset", "--out", str(tmp_path / "runs"), "--set",
              f"data_dir={data}", "threads=1", "batch_size=50"]
    assert run(module, monkeypatch, *common, "epochs=1") == 0
    assert set(splits) == {"validation"}
    log = json.loads(module.JSON_LOG.read_text())
    assert len(log) == 1 and log[0]["kind"] == "probe" and log[0]["test"] is None
    assert 0 <= log[0]["validation"]["mean"] <= 1 and log[0]["recipe"] == "default-toyset-batch_size50-epochs1"
    assert "| probe | default | toyset |" in module.MD_LOG.read_text() and log[0]["tta_views"] == 5
    assert run(module, monkeypatch, *common, "epochs=1") == 0  # same recipe: reused
    with pytest.raises(SystemExit, match="drop the epochs"):
        run(module, monkeypatch, *common, "epochs=1", "--final")
    with pytest.raises(SystemExit, match="fixed 5000-image validation split"):
        run(module, monkeypatch, *common, "validation_size=1000")
    assert set(splits) == {"validation"}
    assert run(module, monkeypatch, *common, "--final") == 0
    assert "test" in splits
    final = json.loads(module.JSON_LOG.read_text())[-1]
    assert final["kind"] == "final" and 0 <= final["test"]["mean"] <= 1
    assert len(list(module.JSON_LOG.parent.glob("final-default-toyset-batch_size50-*.json"))) == 1
    with pytest.raises(SystemExit, match="already had its final test evaluation"):
        run(module, monkeypatch, *common, "--final")
    monkeypatch.setitem(module.cfg.PRESETS, "default", {**module.cfg.PRESETS["default"], "lr": 0.5})
    with pytest.raises(SystemExit, match=r"trained with another recipe: lr 0\.003 \(now 0\.5\); move it away"):
        run(module, monkeypatch, *common, "epochs=1")


def test_an_ensemble_under_a_budget_is_selected_and_reused_as_one_run(select, tmp_path, monkeypatch, capsys):
    """A budget is saved as the steps it resolved to; the same recipe's run is still reused, and
    the log keeps each run's wall time."""
    module, data, splits = select
    measured = Measured(step_s=0.01, validation_s=0.01, checkpoint_s=0.01, spent_s=0.1)
    monkeypatch.setattr("mnist_cnn.train._measure_costs", lambda *a, **k: measured)
    common = ["--preset", "default", "--dataset", "toyset", "--out", str(tmp_path / "runs"), "--set",
              f"data_dir={data}", "threads=1", "batch_size=50", "members=2", "budget=0.1"]
    assert run(module, monkeypatch, *common) == 0
    entry = json.loads(module.JSON_LOG.read_text())[-1]
    assert entry["recipe"] == "default-toyset-batch_size50-budget0.1-members2" and set(splits) == {"validation"}
    assert entry["wall_seconds_per_run"][0] > 0 and entry["minutes_per_run"] > 0
    assert len(entry["validation"]["members_per_seed"][0]) == 2  # each member alone, beside the ensemble
    saved = json.loads((tmp_path / "runs" / f"{entry['recipe']}-s0" / "config.json").read_text())
    assert (saved["members"], saved["budget"]) == (2, 0.0) and saved["steps"] > 0
    assert entry["epochs_per_run"] == [saved["epochs"]]  # the budget's resolved epochs, not the preset's
    capsys.readouterr()
    assert run(module, monkeypatch, *common) == 0  # reused, not refused for its resolved budget
    assert "reusing the complete run" in capsys.readouterr().out


def test_a_final_fit_trains_a_selected_recipe_on_all_but_1000_images(select, tmp_path, monkeypatch):
    module, data, splits = select
    monkeypatch.setitem(module.cfg.PRESETS, "tiny", dict(epochs=1, batch_size=50))
    common = ["--preset", "tiny", "--dataset", "toyset", "--out", str(tmp_path / "runs"), "--set",
              f"data_dir={data}", "threads=1"]
    with pytest.raises(SystemExit, match="give it with --final"):
        run(module, monkeypatch, *common, "--fit")
    with pytest.raises(SystemExit, match="tiny-toyset has no candidate entry: select it"):
        run(module, monkeypatch, *common, "--final", "--fit")
    assert splits == []  # refused before anything was trained or read
    assert run(module, monkeypatch, *common) == 0  # the candidate, on the fixed 5,000
    assert run(module, monkeypatch, *common, "--final", "--fit") == 0
    fit = json.loads(module.JSON_LOG.read_text())[-1]
    assert (fit["kind"], fit["recipe"], fit["fit"], fit["validation_size"]) == ("final", "tiny-toyset-fit", True, 1000)
    assert "test" in splits and 0 <= fit["test"]["mean"] <= 1
    saved = json.loads((tmp_path / "runs" / "tiny-toyset-fit-s0" / "config.json").read_text())
    assert saved["validation_size"] == 1000  # 4,200 of the 5,200 images trained, not 200
    assert "fit: validation 1,000 images, only watched" in module.MD_LOG.read_text()
    with pytest.raises(SystemExit, match="tiny-toyset-fit already had its final test evaluation"):
        run(module, monkeypatch, *common, "--final", "--fit")
