"""`evaluate`: where a trained model (or several, as an ensemble) fails on a split: loss, accuracy,
per-class precision/recall/F1, confusion matrix, most-confused pairs and the worst mistakes, as
numbers, JSON, PNGs and TensorBoard images.

    from mnist_cnn.evaluate import evaluate
    evaluate("runs/best-s0").accuracy
    result = evaluate(["runs/best-s0", "runs/best-s1", "runs/best-s2"], tta=True)
    result.accuracy, [m.accuracy for m in result.members]

The metrics are computed from log-probabilities (`summarize`), not from a model, so an ensemble
is evaluated the same way: its prediction is the average of its members' probabilities (not
logits: members trained differently have differently scaled logits). With `tta`, each member's
probabilities are first averaged over fixed 1-pixel shifts of every image (augment.TTA_SHIFTS),
applied to the uint8 images, so it works for any backend (PyTorch or ONNX).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from mnist_cnn.augment import TTA_SHIFTS, tta_views
from mnist_cnn.data import Split
from mnist_cnn.errors import UsageError
from mnist_cnn.fileio import write_json
from mnist_cnn.inference import Classifier, load_run
from mnist_cnn.outputs import OutputDir
from mnist_cnn.runs import SPLITS, load_split


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
class Member:
    """One model of an ensemble (or the one model evaluated with TTA), scored alone."""

    source: str
    accuracy: float      # this member alone (with TTA when the evaluation uses it)
    loss: float          # its mean cross-entropy, nats


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
    tta: bool = False                                           # probabilities averaged over shifted views
    members: list[Member] = field(default_factory=list)         # an ensemble's (or TTA's) models, each alone
    split_data: Any = field(default=None, repr=False, compare=False)  # the data.Split evaluated (for figures)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (`tta` and `members` only for an ensemble or TTA, as `evaluate` prints them)."""
        out = asdict(replace(self, split_data=None))  # asdict would deep-copy the split's tensors
        out.pop("split_data")
        if not self.members:
            out.pop("tta")
            out.pop("members")
        return out


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


def evaluate(model_or_models: Any, split: str | Split = "test", dataset: Any = None, data_dir: str | Path | None = None,
             *, tta: bool = False, device: str = "cpu") -> Evaluation:
    """Metrics of a trained model, or of several as an ensemble, on a split.

    `model_or_models`: a run directory, a .pt checkpoint, an .onnx file, a loaded Classifier or
    `train`'s result, or a list of them (their probabilities averaged); an ensemble run counts as
    its members. `split`: "train",
    "validation" or "test" of `dataset` (default: the data set the models were trained on, loaded
    again), or a data.Split itself. `tta`: average each model's probabilities over the image and
    its shifted views (len(TTA_SHIFTS) forward passes). An ensemble, or TTA, also scores each
    member alone (`members`)."""
    many = isinstance(model_or_models, (list, tuple))
    loaded = [load_run(m, device) for m in (model_or_models if many else [model_or_models])]
    if not loaded:
        raise UsageError("an ensemble needs at least one run")
    # An ensemble run counts as its members: the same average, and each member scored alone.
    classifiers = [member for c in loaded for member in (c.members or (c,))]
    many = len(classifiers) > 1
    _check_same_task(classifiers)
    part, split_name = _split_for(classifiers[0], split, dataset, data_dir)
    member_log_probs = [classifier_log_probs(c, part.images, tta) for c in classifiers]
    log_probs = member_log_probs[0] if len(classifiers) == 1 else ensemble_log_probs(member_log_probs)
    evaluation = summarize(log_probs, part.labels, classifiers[0].class_names, split_name)
    evaluation.source = " + ".join(str(c.source) for c in loaded) + (" (TTA)" if tta else "")
    evaluation.tta, evaluation.split_data = tta, part
    if many or tta:
        labels = part.labels.long()
        evaluation.members = [Member(str(c.source), float((lp.argmax(1) == labels).double().mean()),
                                     float(-lp[torch.arange(len(labels)), labels].mean()))
                              for c, lp in zip(classifiers, member_log_probs)]
    return evaluation


def _split_for(classifier: Classifier, split: str | Split, dataset: Any,
               data_dir: str | Path | None) -> tuple[Split, str]:
    """The images and labels to evaluate on, and the split's name for the report."""
    if isinstance(split, Split):
        return split, "given"
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if dataset is not None:
        return getattr(dataset, split), split
    return load_split(classifier.config, split, str(data_dir) if data_dir else None), split


def _check_same_task(classifiers: Sequence[Classifier]) -> None:
    """An ensemble's members predict the same classes and were trained on the same data."""
    first = classifiers[0]
    for c in classifiers[1:]:
        if tuple(c.class_names) != tuple(first.class_names):
            raise UsageError(f"{c.source} predicts classes {', '.join(c.class_names)}, but {first.source} "
                             f"predicts {', '.join(first.class_names)}; an ensemble needs the same classes")
        if not all(c.config.get(k) == first.config.get(k) for k in ("dataset", "validation_size")):
            raise UsageError(f"{c.source} was trained on {c.config.get('dataset')} (validation size "
                             f"{c.config.get('validation_size')}), {first.source} on {first.config.get('dataset')} "
                             f"(validation size {first.config.get('validation_size')}); evaluate them separately")


def classifier_log_probs(classifier: Classifier, images_u8: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(N, C) float64 log-probabilities of one classifier; with `tta`, of its probabilities
    averaged over len(TTA_SHIFTS) shifted views (that many forward passes)."""
    views = tta_views(images_u8) if tta else [images_u8]
    return ensemble_log_probs([torch.log_softmax(classifier.logits(v).double(), 1) for v in views])


def write_report(evaluation: Evaluation, images_u8: torch.Tensor, out_dir: str | Path,
                 global_step: int = 0, tensorboard: bool = True) -> dict[str, str]:
    """<split>.json, <split>-confusion.png, <split>-mistakes.png in out_dir, and the figures as
    TensorBoard images in the same folder (its own writer: train/ and validation/ stay untouched)."""
    # Here, not at the top: matplotlib costs ~1 s to import, and training imports this module.
    from mnist_cnn.plots import close_figures, plot_confusion, plot_mistakes

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
    close_figures(confusion_fig, mistakes_fig)
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


def format_members(e: Evaluation) -> str:
    """One line per member and one for the ensemble, for the console."""
    views = f", each averaged over {len(TTA_SHIFTS)} shifted views" if e.tta else ""
    lines = [f"Ensemble of {len(e.members)} (average of probabilities{views}):"]
    width = max(len(m.source) for m in e.members)
    for m in e.members:
        lines.append(f"  {m.source:<{width}}  accuracy {m.accuracy:.4f}  loss {m.loss:.4f}")
    lines.append(f"  {'ensemble':<{width}}  accuracy {e.accuracy:.4f}  loss {e.loss:.4f}")
    return "\n".join(lines)
