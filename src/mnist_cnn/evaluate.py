"""Where a trained model fails: loss, accuracy, per-class precision/recall/F1, confusion matrix,
most-confused pairs and the worst mistakes, as numbers, JSON, PNGs and TensorBoard images.

The metrics are computed from log-probabilities (`summarize`), not from a model, so an ensemble
is evaluated the same way: average the members' probabilities
(`ensemble_log_probs([...])`) and pass the result.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from mnist_cnn.errors import UsageError

SPLITS = ("train", "validation", "test")


@dataclass
class ClassMetrics:
    name: str
    precision: float   # of the images predicted as this class, the fraction that are it (0 if none predicted)
    recall: float      # of the images of this class, the fraction predicted as it
    f1: float
    support: int       # images of this class in the split


@dataclass
class ConfusedPair:
    true: str
    predicted: str
    count: int


@dataclass
class Mistake:
    index: int          # position in the split
    true: str
    predicted: str
    confidence: float   # probability given to the (wrong) predicted class


@dataclass
class Evaluation:
    split: str
    images: int
    loss: float        # mean cross-entropy, nats
    accuracy: float
    class_names: list[str] = field(default_factory=list)
    per_class: list[ClassMetrics] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)   # [true][predicted] counts
    most_confused: list[ConfusedPair] = field(default_factory=list)
    worst_mistakes: list[Mistake] = field(default_factory=list)
    source: str = ""                                            # the run or .onnx file evaluated
    files: dict[str, str] = field(default_factory=dict)         # figure name -> path written

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensemble_log_probs(members: Sequence[torch.Tensor]) -> torch.Tensor:
    """log of the mean of the members' probabilities, from their (N, C) log-probabilities."""
    stacked = torch.stack([m.double() for m in members])
    return torch.logsumexp(stacked, 0) - math.log(len(members))


def summarize(log_probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], split: str = "test",
              pairs: int = 10, mistakes: int = 25) -> Evaluation:
    """All metrics from (N, C) log-probabilities and (N,) int labels. Cost: O(N*C), one pass."""
    log_probs, labels = log_probs.detach().double().cpu(), labels.cpu().long()
    n, c = log_probs.shape
    if n == 0:
        raise UsageError(f"the {split} split is empty; nothing to evaluate")
    predicted = log_probs.argmax(1)
    loss = float(-log_probs[torch.arange(n), labels].mean())
    accuracy = float((predicted == labels).double().mean())
    confusion = torch.bincount(labels * c + predicted, minlength=c * c).reshape(c, c)
    tp = confusion.diag().double()
    predicted_count, support = confusion.sum(0).double(), confusion.sum(1).double()
    precision = torch.where(predicted_count > 0, tp / predicted_count.clamp_min(1), torch.zeros(c, dtype=torch.double))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros(c, dtype=torch.double))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros(c, dtype=torch.double))
    per_class = [ClassMetrics(class_names[k], float(precision[k]), float(recall[k]), float(f1[k]), int(support[k]))
                 for k in range(c)]
    off = confusion.clone()
    off.fill_diagonal_(0)
    order = torch.argsort(off.flatten(), descending=True, stable=True)[:pairs]
    most_confused = [ConfusedPair(class_names[int(i) // c], class_names[int(i) % c], int(off.flatten()[i]))
                     for i in order if off.flatten()[i] > 0]
    wrong = (predicted != labels).nonzero().flatten()
    confidence = log_probs[wrong, predicted[wrong]].exp()
    worst = wrong[torch.argsort(confidence, descending=True, stable=True)][:mistakes]
    worst_mistakes = [Mistake(int(i), class_names[int(labels[i])], class_names[int(predicted[i])],
                              float(log_probs[i, predicted[i]].exp())) for i in worst]
    return Evaluation(split, n, loss, accuracy, list(class_names), per_class, confusion.tolist(),
                      most_confused, worst_mistakes)


def load_split(config: dict[str, Any], split: str, data_dir: str | None = None):
    """The `split` (a data.Split) of the data set a run was trained on, with its config's validation size."""
    from mnist_cnn.data import load_dataset

    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if "dataset" not in config:
        raise UsageError("the model carries no training config, so its data set is unknown")
    dataset = load_dataset(config["dataset"], data_dir or config.get("data_dir"), config.get("validation_size", 5000),
                           progress=False)
    return getattr(dataset, split)


def evaluate_classifier(classifier, part, split: str = "test") -> Evaluation:
    """Evaluate a `inference.Classifier` on a data.Split."""
    log_probs = torch.log_softmax(classifier.logits(part.images).double(), 1)
    evaluation = summarize(log_probs, part.labels, classifier.class_names, split)
    evaluation.source = str(classifier.source)
    return evaluation


def evaluate_run(run: str | Path, split: str = "test", data_dir: str | None = None,
                 device: str = "auto") -> Evaluation:
    """Metrics of a run's model (or an exported .onnx) on `split` of the data set it was trained on."""
    from mnist_cnn.inference import load_classifier

    classifier = load_classifier(run, device)
    return evaluate_classifier(classifier, load_split(classifier.config, split, data_dir), split)


def write_report(evaluation: Evaluation, images_u8: torch.Tensor, out_dir: str | Path,
                 global_step: int = 0, tensorboard: bool = True) -> dict[str, str]:
    """<split>.json, <split>-confusion.png, <split>-mistakes.png in out_dir, and the figures as
    TensorBoard images in the same folder (its own writer: train/ and validation/ stay untouched)."""
    from mnist_cnn.outputs import OutputDir
    from mnist_cnn.plots import plot_confusion, plot_mistakes
    from mnist_cnn.runs import write_json

    out = OutputDir(out_dir)
    s = evaluation.split
    report, confusion_png, mistakes_png = out.claim([f"{s}.json", f"{s}-confusion.png", f"{s}-mistakes.png"])
    confusion_fig = plot_confusion(evaluation.confusion, evaluation.class_names, confusion_png,
                                   title=f"Confusion matrix, {s} set (accuracy {evaluation.accuracy:.4f})")
    mistake_images = images_u8[[m.index for m in evaluation.worst_mistakes]] if evaluation.worst_mistakes else images_u8[:0]
    mistakes_fig = plot_mistakes(mistake_images, evaluation.worst_mistakes, mistakes_png,
                                 title=f"Most confident mistakes, {s} set")
    files = {"report": str(report), "confusion": str(confusion_png), "mistakes": str(mistakes_png)}
    if tensorboard:
        writer = out.tensorboard_writer(suffix=f".{s}")  # replaces this split's previous figures only
        writer.add_figure(f"{s}/confusion_matrix", confusion_fig, global_step)
        writer.add_figure(f"{s}/worst_mistakes", mistakes_fig, global_step)
        writer.add_scalar(f"{s}/loss", evaluation.loss, global_step)
        writer.add_scalar(f"{s}/accuracy", evaluation.accuracy, global_step)
        writer.close()
        files["tensorboard"] = str(out.path)
    import matplotlib.pyplot as plt

    plt.close(confusion_fig)
    plt.close(mistakes_fig)
    evaluation.files = files
    write_json(report, evaluation.to_dict())
    return files


def format_report(e: Evaluation) -> str:
    """The console report: totals, per-class table, confusion matrix, most-confused pairs."""
    lines = [f"{e.split.capitalize()} set: {e.images} images ({e.source})",
             f"- Loss:\t\t{e.loss:.4f}", f"- Accuracy:\t{e.accuracy:.4f}", ""]
    w = max(5, *(len(n) for n in e.class_names))
    lines.append(f"{'class':<{w}}  precision  recall      f1  support")
    for m in e.per_class:
        lines.append(f"{m.name:<{w}}  {m.precision:9.4f}  {m.recall:6.4f}  {m.f1:6.4f}  {m.support:7d}")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted)"]
    cw = max(len(str(max(max(r) for r in e.confusion))), *(len(n) for n in e.class_names)) + 1
    lines.append(" " * w + "".join(f"{n[:cw - 1]:>{cw}}" for n in e.class_names))
    for name, row in zip(e.class_names, e.confusion):
        lines.append(f"{name:<{w}}" + "".join(f"{v:>{cw}d}" for v in row))
    if e.most_confused:
        lines += ["", "Most confused (true -> predicted: images)"]
        lines += [f"  {p.true} -> {p.predicted}: {p.count}" for p in e.most_confused[:5]]
    return "\n".join(lines)
