"""Evaluating a trained run on a data split."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnist_cnn.runs import load_trained
from mnist_cnn.train import evaluate, select_device


@dataclass
class Evaluation:
    split: str
    images: int
    loss: float
    accuracy: float


def evaluate_run(run: str | Path, split: str = "test", data_dir: str | None = None,
                 device: str = "auto") -> Evaluation:
    """Loss and accuracy of a run's model on `split` of the data set it was trained on."""
    from mnist_cnn.data import load_dataset

    trained = load_trained(run, select_device(device))
    c = trained.config
    dataset = load_dataset(c["dataset"], data_dir or c.get("data_dir"), c["validation_size"])
    part = getattr(dataset, split)
    loss, accuracy = evaluate(trained.model, part.images, part.labels, channels_last=c.get("channels_last", True))
    return Evaluation(split, len(part), loss, accuracy)
