"""Validation accuracy of one run under each test-time view set: plain, plain + mirror, 5 shifts,
5 shifts + their mirrors (docs/accuracy.md: mirrored TTA is kept only if it wins on validation).

    python bench/tta_compare.py runs/select/resnet-fashion-fashion-mnist-s0 [--threads 2]

Reads the validation split only (10 forward passes over it). Mirrors are meaningful only for runs
trained with flips on a mirror-symmetric data set (Fashion-MNIST).
"""
from __future__ import annotations

import argparse

import torch

from mnist_cnn.augment import tta_views
from mnist_cnn.runs import load_split
from mnist_cnn.inference import load_classifier


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    classifier = load_classifier(args.run, "cpu")
    part = load_split(classifier.config, "validation")
    labels = part.labels.long()
    views = tta_views(part.images, flip=True)  # 5 shifts (the first is the image), then their mirrors
    probs = [torch.softmax(classifier.logits(v).double(), 1) for v in views]

    def accuracy(chosen: list[int]) -> float:
        return float((torch.stack([probs[i] for i in chosen]).mean(0).argmax(1) == labels).double().mean())

    for name, chosen in (("plain", [0]), ("plain + mirror", [0, 5]), ("5 shifts", list(range(5))),
                         ("5 shifts + mirrors", list(range(10)))):
        print(f"{name:20s} {100 * accuracy(chosen):.2f}%")


if __name__ == "__main__":
    main()
