"""Ensembles and test-time augmentation: several runs (or .onnx files) evaluated as one classifier.

The ensemble's prediction is the average of its members' probabilities (not logits: members
trained differently have differently scaled logits). With `tta`, each member's probabilities are
first averaged over fixed 1-pixel shifts of every image (augment.TTA_SHIFTS), which works for any
backend because the shifts are applied to the uint8 images. The metrics are evaluate.summarize's,
so an ensemble's report reads like a single run's.

    from mnist_cnn.ensemble import evaluate_ensemble
    result = evaluate_ensemble(["runs/best-s0", "runs/best-s1", "runs/best-s2"], tta=True)
    result.evaluation.accuracy, [m.accuracy for m in result.members]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mnist_cnn.augment import TTA_SHIFTS, tta_views
from mnist_cnn.errors import UsageError
from mnist_cnn.evaluate import Evaluation, ensemble_log_probs, load_split, summarize


@dataclass
class Member:
    source: str
    accuracy: float      # this member alone (with TTA when the ensemble uses it)
    loss: float          # its mean cross-entropy, nats


@dataclass
class EnsembleEvaluation:
    evaluation: Evaluation   # the ensemble's metrics
    members: list[Member]
    tta: bool
    data: Any                # the data.Split evaluated (images for the report's figures)


def classifier_log_probs(classifier, images_u8: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """(N, C) float64 log-probabilities of one classifier; with `tta`, of its probabilities
    averaged over len(TTA_SHIFTS) shifted views (that many forward passes)."""
    views = tta_views(images_u8) if tta else [images_u8]
    return ensemble_log_probs([torch.log_softmax(classifier.logits(v).double(), 1) for v in views])


def evaluate_ensemble(runs: Sequence[str | Path], split: str = "test", data_dir: str | None = None,
                      device: str = "auto", tta: bool = False) -> EnsembleEvaluation:
    """Metrics of the averaged probabilities of `runs` on `split` of the data set they share."""
    from mnist_cnn.inference import load_classifier

    if not runs:
        raise UsageError("an ensemble needs at least one run")
    classifiers = [load_classifier(run, device) for run in runs]
    first = classifiers[0]
    for c in classifiers[1:]:
        if tuple(c.class_names) != tuple(first.class_names):
            raise UsageError(f"{c.source} predicts classes {', '.join(c.class_names)}, but {first.source} "
                             f"predicts {', '.join(first.class_names)}; an ensemble needs the same classes")
        same_data = all(c.config.get(k) == first.config.get(k) for k in ("dataset", "validation_size"))
        if not same_data:
            raise UsageError(f"{c.source} was trained on {c.config.get('dataset')} (validation size "
                             f"{c.config.get('validation_size')}), {first.source} on {first.config.get('dataset')} "
                             f"(validation size {first.config.get('validation_size')}); evaluate them separately")
    part = load_split(first.config, split, data_dir)
    member_log_probs = [classifier_log_probs(c, part.images, tta) for c in classifiers]
    labels = part.labels.long()
    members = []
    for c, lp in zip(classifiers, member_log_probs):
        members.append(Member(str(c.source), float((lp.argmax(1) == labels).double().mean()),
                              float(-lp[torch.arange(len(labels)), labels].mean())))
    evaluation = summarize(ensemble_log_probs(member_log_probs), labels, first.class_names, split)
    evaluation.source = " + ".join(str(c.source) for c in classifiers) + (" (TTA)" if tta else "")
    return EnsembleEvaluation(evaluation, members, tta, part)


def format_members(result: EnsembleEvaluation) -> str:
    """One line per member and one for the ensemble, for the console."""
    views = f", each averaged over {len(TTA_SHIFTS)} shifted views" if result.tta else ""
    lines = [f"Ensemble of {len(result.members)} (average of probabilities{views}):"]
    width = max(len(m.source) for m in result.members)
    for m in result.members:
        lines.append(f"  {m.source:<{width}}  accuracy {m.accuracy:.4f}  loss {m.loss:.4f}")
    e = result.evaluation
    lines.append(f"  {'ensemble':<{width}}  accuracy {e.accuracy:.4f}  loss {e.loss:.4f}")
    return "\n".join(lines)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
