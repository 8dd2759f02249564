"""evaluate: metrics from log-probabilities, the report files, and the command on a real run."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mnist_cnn.cli import main
from mnist_cnn.errors import UsageError
from mnist_cnn.evaluate import ensemble_log_probs, evaluate, summarize, write_report
from mnist_cnn.inference import load_classifier


def log_probs_for(predicted: list[int], confidence: list[float], classes: int = 3) -> torch.Tensor:
    """Log-probabilities whose argmax is `predicted` with that probability, the rest shared evenly."""
    p = torch.zeros(len(predicted), classes, dtype=torch.float64)
    for i, (k, c) in enumerate(zip(predicted, confidence)):
        p[i] = (1 - c) / (classes - 1)
        p[i, k] = c
    return p.log()


def test_summarize_counts_metrics_pairs_and_mistakes():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = [0, 0, 1, 1, 2, 2, 2, 1]
    confidence = [0.9, 0.8, 0.95, 0.7, 0.6, 0.9, 0.9, 0.55]
    e = summarize(log_probs_for(predicted, confidence), labels, ("a", "b", "c"))
    assert e.images == 8 and e.accuracy == pytest.approx(5 / 8)
    assert e.confusion == [[2, 1, 0], [0, 1, 1], [0, 1, 2]]
    # class b: predicted 3 times, right once; 2 images, 1 found
    b = e.per_class[1]
    assert (b.precision, b.recall, b.support) == (pytest.approx(1 / 3), pytest.approx(1 / 2), 2)
    assert b.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert [(p.true, p.predicted, p.count) for p in e.most_confused] == [("a", "b", 1), ("b", "c", 1), ("c", "b", 1)]
    # the most confident mistake first: #2 (a->b at 0.95), then #4 (0.6), then #7 (0.55)
    assert [(m.index, m.true, m.predicted) for m in e.worst_mistakes] == [(2, "a", "b"), (4, "b", "c"), (7, "c", "b")]
    assert e.worst_mistakes[0].confidence == pytest.approx(0.95)
    true_p = [0.9, 0.8, 0.025, 0.7, 0.2, 0.9, 0.9, 0.225]
    assert e.loss == pytest.approx(-sum(math.log(p) for p in true_p) / 8)


def test_summarize_class_never_predicted_has_zero_precision_not_nan():
    e = summarize(log_probs_for([0, 0], [0.9, 0.9]), torch.tensor([0, 1]), ("a", "b", "c"))
    assert [m.precision for m in e.per_class] == [0.5, 0.0, 0.0]
    assert [m.f1 for m in e.per_class][1:] == [0.0, 0.0]
    assert e.per_class[2].support == 0


def test_summarize_empty_split_is_a_usage_error():
    with pytest.raises(UsageError):
        summarize(torch.empty(0, 3), torch.empty(0, dtype=torch.long), ("a", "b", "c"))


def test_ensemble_averages_probabilities():
    a = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).log()
    b = torch.tensor([[0.5, 0.5], [0.6, 0.4]]).log()
    assert torch.allclose(ensemble_log_probs([a, b]).exp(), torch.tensor([[0.7, 0.3], [0.4, 0.6]], dtype=torch.float64))


def test_report_files_tensorboard_and_refusal_to_overwrite_user_files(toy_trained_run, tmp_path):
    from synthetic import toy_dataset
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    classifier = load_classifier(toy_trained_run, "cpu")
    test = toy_dataset().test
    e = evaluate(classifier, "test", dataset=toy_dataset())
    assert e.images == len(test.labels) and 0 <= e.accuracy <= 1
    out = tmp_path / "evaluation"
    files = write_report(e, test.images, out, global_step=7)
    report = json.loads(Path(files["report"]).read_text())
    assert report["accuracy"] == e.accuracy and len(report["per_class"]) == 10 and len(report["confusion"]) == 10
    for key in ("confusion", "mistakes"):
        with Image.open(files[key]) as im:
            assert im.format == "PNG" and im.width > 300
    ea = EventAccumulator(str(out))
    ea.Reload()
    assert set(ea.Tags()["images"]) == {"test/confusion_matrix", "test/worst_mistakes"}
    assert ea.Scalars("test/accuracy")[0].step == 7
    # Running again replaces our own outputs (and our old event file: one evaluation shown, not two).
    write_report(e, test.images, out, global_step=7)
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    # Another split's report sits next to it, in TensorBoard too.
    validation = evaluate(classifier, "validation", dataset=toy_dataset())
    write_report(validation, toy_dataset().validation.images, out, global_step=7)
    assert {p.name for p in out.glob("*.json")} >= {"test.json", "validation.json"}
    assert len(list(out.glob("events.out.tfevents.*"))) == 2
    # A person's own file where we would write is never overwritten.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "test-confusion.png").write_bytes(b"my drawing")
    with pytest.raises(UsageError, match="refusing to overwrite"):
        write_report(e, test.images, mine)
    assert (mine / "test-confusion.png").read_bytes() == b"my drawing"
    assert not (mine / "test.json").exists()  # all-or-nothing: nothing else was written either


@pytest.mark.slow
def test_evaluate_command_on_a_real_run(trained_mnist_run, real_mnist_env, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_mnist_run, run)
    before = {p: p.stat().st_mtime_ns for d in ("train", "validation") for p in (run / d).iterdir()}
    assert main(["evaluate", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 10000 and report["accuracy"] > 0.97
    assert sum(map(sum, report["confusion"])) == 10000
    assert [c["name"] for c in report["per_class"]] == [str(k) for k in range(10)]
    assert sum(c["support"] for c in report["per_class"]) == 10000
    assert len(report["worst_mistakes"]) == 25 and report["most_confused"][0]["count"] >= report["most_confused"][-1]["count"]
    for name in ("test.json", "test-confusion.png", "test-mistakes.png"):
        assert (run / "evaluation" / name).is_file()
    assert {p: p.stat().st_mtime_ns for d in ("train", "validation") for p in (run / d).iterdir()} == before
    assert main(["evaluate", str(run)]) == 0  # text form; our previous outputs are replaced
    text = capsys.readouterr().out
    assert "Confusion matrix" in text and "Most confused" in text and f"{report['accuracy']:.4f}" in text
