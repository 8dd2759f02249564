"""PNG figures a person would rather see than read. Matplotlib's Agg backend: no display needed."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnist_cnn.runlog import EpochRecord  # noqa: E402


def plot_curves(history: Sequence[EpochRecord], path: Path) -> None:
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                 class_names: Sequence[str], path: Path, count: int = 25, mistakes: int = 5) -> None:
    """The lesson's Fig. 10: images with true and predicted labels, mistakes in red.

    Shows the first `count - mistakes` images, then the first `mistakes` misclassified ones
    (if any), so a good model's grid still shows where it goes wrong.
    """
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
        ax.set_title(f"True: {class_names[labels[i]]}\nPred: {class_names[predicted[i]]}",
                     fontsize=9, color="black" if ok else "red")
        if not ok:
            for side in ax.spines.values():
                side.set(visible=True, color="red", linewidth=2)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Validation samples (mistakes in red)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The functions below return their figure (already saved) so the caller can also log it to
# TensorBoard with `writer.add_figure`; the caller closes it.

def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path,
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def plot_mistakes(images: torch.Tensor, mistakes: Sequence, path: Path, title: str = "Worst mistakes",
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def plot_comparison(runs: Sequence[tuple[str, Sequence[EpochRecord]]], path: Path) -> None:
    """Validation accuracy and loss per epoch for several runs, one line each (`mnist-cnn compare`)."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, history in runs:
        epochs = [r.epoch for r in history]
        acc_ax.plot(epochs, [100 * r.validation_accuracy for r in history], "o-", ms=3, label=name)
        loss_ax.plot(epochs, [r.validation_loss for r in history], "o-", ms=3, label=name)
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    loss_ax.set(title="Validation loss (cross-entropy)", xlabel="epoch", ylabel="loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
