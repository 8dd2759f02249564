"""PNG figures a person would rather see than read. Matplotlib's Agg backend: no display needed.

Every function returns its Figure (for a notebook or TensorBoard) and saves it when given a path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

# Agg unless a backend was chosen (a Jupyter kernel sets MPLBACKEND to its inline backend,
# which Agg would replace, so figures would no longer show in the notebook).
if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnist_cnn.runs import EpochRecord  # noqa: E402


def _finish(fig, path: Path | None, close: bool = True):
    """Save `fig` when a path is given; closed figures still display in Jupyter, once."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    if close:
        plt.close(fig)
    return fig


def close_figures(*figures) -> None:
    """Free figures a caller kept open (e.g. to log them to TensorBoard first)."""
    for fig in figures:
        plt.close(fig)


def plot_curves(history: Sequence[EpochRecord], path: Path | None = None):
    """Accuracy and loss per epoch, training and validation side by side."""
    epochs = [r.epoch for r in history]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    acc_ax.plot(epochs, [r.train_accuracy for r in history], "o-", label="training")
    acc_ax.plot(epochs, [r.validation_accuracy for r in history], "o-", label="validation")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    loss_ax.plot(epochs, [r.train_loss for r in history], "o-", label="training")
    loss_ax.plot(epochs, [r.validation_loss for r in history], "o-", label="validation")
    loss_ax.set(title="Loss (cross-entropy)", xlabel="epoch", ylabel="loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if len(epochs) < 15:
        for ax in (acc_ax, loss_ax):
            ax.set_xticks(epochs)
    return _finish(fig, path)


def plot_samples(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor | None,
                 class_names: Sequence[str], path: Path | None = None, count: int = 25, mistakes: int = 5,
                 title: str = "Validation samples (mistakes in red)"):
    """The lesson's Fig. 10: images with true and predicted labels, mistakes in red.

    Shows the first `count - mistakes` images, then the first `mistakes` misclassified ones
    (if any), so a good model's grid still shows where it goes wrong. predicted=None: the
    first `count` images with their labels only (the lesson's Fig. 5).
    """
    if predicted is None:
        predicted, mistakes = labels, 0
        label_only = True
    else:
        label_only = False
    images, labels, predicted = images.cpu(), labels.cpu(), predicted.cpu()
    wrong = (predicted != labels).nonzero().flatten()[:mistakes].tolist()
    shown = [i for i in range(min(len(labels), count - len(wrong))) if i not in wrong] + wrong
    cols = 5
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        ok = bool(predicted[i] == labels[i])
        ax.imshow(images[i, 0].numpy(), cmap="binary")
        ax.set_title(f"Label: {class_names[labels[i]]}" if label_only else
                     f"True: {class_names[labels[i]]}\nPred: {class_names[predicted[i]]}",
                     fontsize=9, color="black" if ok else "red")
        if not ok:
            for side in ax.spines.values():
                side.set(visible=True, color="red", linewidth=2)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    return _finish(fig, path)


# The functions below return their figure (already saved) so the caller can also log it to
# TensorBoard with `writer.add_figure`; the caller closes it.

def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path | None,
                   title: str = "Confusion matrix"):
    """Counts annotated; colour is the row's fraction so a class's errors show whatever its size."""
    counts = torch.tensor(confusion, dtype=torch.float64)
    fraction = counts / counts.sum(1, keepdim=True).clamp_min(1)
    c = len(class_names)
    size = max(5.0, 0.55 * c + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(fraction.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(c):
        for j in range(c):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if fraction[i, j] > 0.5 else ("red" if i != j else "black"))
    ax.set_xticks(range(c), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0, ha="right"
                  if max(map(len, class_names)) > 2 else "center")
    ax.set_yticks(range(c), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _finish(fig, path, close=False)


def plot_mistakes(images: torch.Tensor, mistakes: Sequence, path: Path | None, title: str = "Worst mistakes",
                  cols: int = 5):
    """Gallery of misclassified images: true class, predicted class and its probability."""
    images = images.cpu()
    rows = max(1, -(-len(mistakes) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, m in zip(axes.flat, images, mistakes):
        ax.imshow(image[0].numpy(), cmap="binary")
        ax.set_title(f"#{m.index} true {m.true}\npred {m.predicted} ({m.confidence:.0%})", fontsize=8, color="red")
    if not mistakes:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=12)
    fig.suptitle(title)
    return _finish(fig, path, close=False)


def member_histories(history: Sequence[EpochRecord]) -> list[list[EpochRecord]]:
    """A history cut where its epochs start again: an ensemble's is its members' one after another."""
    parts: list[list[EpochRecord]] = []
    for record in history:
        if not parts or record.epoch <= parts[-1][-1].epoch:
            parts.append([])
        parts[-1].append(record)
    return parts


def plot_comparison(runs: Sequence[tuple[str, Sequence[EpochRecord]]], path: Path | None = None):
    """Validation accuracy and loss per epoch for several runs, one line each (`mnist-cnn compare`);
    an ensemble gets one line per member, in its run's colour."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, history) in enumerate(runs):
        parts = member_histories(history)
        for k, part in enumerate(parts, 1):
            style = dict(marker="o", ms=3, color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[(k - 1) % 4],
                         label=f"{name}, member {k}" if len(parts) > 1 else name)
            epochs = [r.epoch for r in part]
            acc_ax.plot(epochs, [100 * r.validation_accuracy for r in part], **style)
            loss_ax.plot(epochs, [r.validation_loss for r in part], **style)
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    loss_ax.set(title="Validation loss (cross-entropy)", xlabel="epoch", ylabel="loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_scalars(scalars: dict[str, dict[str, Sequence[tuple[float, int, float]]]], path: Path | None = None,
                 tags: Sequence[str] = ("accuracy", "loss")):
    """TensorBoard's Scalars tab as a still picture: one panel per tag, one line per writer
    (`train` per batch, faint; `validation` per epoch, with markers), on the global-step axis.

    `scalars` is {writer: {tag: [(wall_time, step, value), ...]}}, what `tbexport.read_scalars`
    gives for each writer directory of a run.
    """
    fig, axes = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 4), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for writer, by_tag in sorted(scalars.items()):
            rows = by_tag.get(tag, ())
            if not rows:
                continue
            steps, values = [r[1] for r in rows], [r[2] for r in rows]
            per_epoch = len(rows) < 200  # a writer with few points (validation) gets markers
            ax.plot(steps, values, "o-" if per_epoch else "-", ms=4, lw=1.5 if per_epoch else 0.6,
                    alpha=1.0 if per_epoch else 0.5, label=writer)
        ax.set(title=tag, xlabel="step (optimizer steps)", ylabel=tag, yscale="log" if tag == "loss" else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, path)
