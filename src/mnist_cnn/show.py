"""What the layers of a network do: their output shapes and sizes (`layer_table`, the lesson's
Fig. 7), what the convolution layers learned (`plot_filters`), and every conv/pool/ReLU layer's
feature maps for one image (the lesson's Figs 1-4, on the real network).

Feature maps are caught with forward hooks by module name, so any registered model works: the
seed net shows conv1 pool1 relu1 conv2 pool2 relu2; another model shows whichever conv, pool and
ReLU modules it has (those with 2-D maps; the classifier head's ReLUs are skipped).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from mnist_cnn.errors import UsageError
from mnist_cnn.inference import Classifier, is_onnx, load_classifier, load_run, to_input
from mnist_cnn.models import count_parameters, create_model
from mnist_cnn.outputs import OutputDir
from mnist_cnn.plots import close_figures
from mnist_cnn.preprocess import preprocess
from mnist_cnn.runs import load_split

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU)
MAX_FILTER_GRID = (32, 16)  # at most 32 output x 16 input channels drawn per conv layer (readability)
MAX_MAPS = 64               # at most this many channels drawn per feature-map figure


@dataclass
class ShowResult:
    image_source: str                      # "test #17" or the user's file
    true: str | None                       # class name when known (test images)
    predicted: str
    confidence: float
    layers: list[str] = field(default_factory=list)           # feature-map layers, forward order
    files: dict[str, str] = field(default_factory=dict)       # figure name -> PNG path


@dataclass
class Layer:
    name: str                    # the module's name, e.g. "conv1"
    kind: str                    # its class, e.g. "Conv2d"
    output_shape: tuple[int, ...]  # for one 28x28 image, batch dimension dropped
    parameters: int


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@contextmanager
def watching_outputs(model: nn.Module, wanted: Callable[[nn.Module], bool],
                     record: Callable[[str, nn.Module, torch.Tensor], None]) -> Iterator[None]:
    """Forward hooks on every named submodule that `wanted` accepts, calling record(name, module,
    output) during each forward pass inside the `with`; removed on the way out."""
    hooks = [module.register_forward_hook(lambda m, _inputs, output, name=name: record(name, m, output))
             for name, module in model.named_modules() if name and wanted(module)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def feature_maps(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({layer name: (C, H, W) output}, logits) for one input x (1, C, 28, 28), in forward order."""
    maps: dict[str, torch.Tensor] = {}

    def record(name: str, _module: nn.Module, output: torch.Tensor) -> None:
        if output.dim() == 4:  # (1, C, H, W): a spatial map, not a classifier-head vector
            maps[name] = output[0].detach().float().cpu()

    with watching_outputs(model, lambda m: isinstance(m, (nn.Conv2d, *POOLS, *ACTIVATIONS)), record):
        with torch.inference_mode():
            logits = model(x)
    return maps, logits[0].float().cpu()


def layer_table(model: nn.Module | str, channels: int = 1) -> list[Layer]:
    """Each layer's output shape and parameter count for one 28x28 image (the lesson's Fig. 7)."""
    if isinstance(model, str):
        model = create_model(model)
    rows: list[Layer] = []

    def record(name: str, module: nn.Module, output: torch.Tensor) -> None:
        rows.append(Layer(name, type(module).__name__, tuple(output.shape[1:]), count_parameters(module)))

    def is_leaf(module: nn.Module) -> bool:  # the layers themselves, not the blocks holding them
        return not any(True for _ in module.children())

    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with watching_outputs(model, is_leaf, record), torch.inference_mode():
            model(torch.zeros(1, channels, 28, 28, device=device))
    finally:
        model.train(was_training)
    return rows


def format_layer_table(rows: Sequence[Layer]) -> str:
    """`layer_table` as aligned text, with the total parameter count."""
    lines = [f"{'layer':<10}{'type':<11}{'output shape':<15}{'parameters':>13}"]
    lines += [f"{r.name:<10}{r.kind:<11}{str(r.output_shape):<15}{r.parameters:>13,}" for r in rows]
    lines.append(f"{'total':<36}{sum(r.parameters for r in rows):>13,}")
    return "\n".join(lines)


def plot_filters(model: Any, layer: str | None = None, path: str | Path | None = None):
    """The kernels of a convolution layer of `model` (a module, or a run `load_run` takes), by
    name (default: the first), blue negative, red positive; saved when given a path."""
    module = model if isinstance(model, nn.Module) else load_run(model).model
    if module is None:
        raise UsageError("filters need the PyTorch network, not an exported .onnx file")
    convs = dict(conv_layers(module))
    if not convs:
        raise UsageError("this network has no convolution layers")
    name = layer or next(iter(convs))
    if name not in convs:
        raise UsageError(f"no convolution layer {name!r}; the network has: {', '.join(convs)}")
    return plot_kernels(name, convs[name], None if path is None else Path(path))


def plot_kernels(name: str, conv: nn.Conv2d, path: Path | None = None):
    """Grid of a conv layer's kernels: a row per output channel, a column per input channel,
    each on a shared colour scale (blue negative, red positive)."""
    import matplotlib.pyplot as plt

    w = conv.weight.detach().float().cpu()  # (out, in, kh, kw)
    out_c, in_c = min(w.shape[0], MAX_FILTER_GRID[0]), min(w.shape[1], MAX_FILTER_GRID[1])
    w = w[:out_c, :in_c]
    limit = float(w.abs().max()) or 1.0
    if in_c == 1:  # one input channel: lay the filters out in a row (or a few)
        cols = min(out_c, 8)
        rows = -(-out_c // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.4 + 0.6), squeeze=False)
        cells = [(axes.flat[k], w[k, 0], f"{k}") for k in range(out_c)]
    else:
        fig, axes = plt.subplots(out_c, in_c, figsize=(in_c * 0.9 + 0.5, out_c * 0.9 + 0.8), squeeze=False)
        cells = [(axes[o, i], w[o, i], None) for o in range(out_c) for i in range(in_c)]
        for o in range(out_c):
            axes[o, 0].set_ylabel(f"out {o}", fontsize=7)
        for i in range(in_c):
            axes[0, i].set_title(f"in {i}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for ax, kernel, title in cells:
        ax.imshow(kernel.numpy(), cmap="bwr", vmin=-limit, vmax=limit)
        if title is not None:
            ax.set_title(title, fontsize=8)
    fig.suptitle(f"{name}: {w.shape[2]}x{w.shape[3]} filters, {conv.out_channels} out x {conv.in_channels} in")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_feature_maps(name: str, maps: torch.Tensor, path: Path, title: str):
    """A layer's output channels for one image, each scaled to its own range (so weak maps show)."""
    import matplotlib.pyplot as plt

    maps = maps[:MAX_MAPS]
    c = len(maps)
    cols = min(c, 8)
    rows = -(-c // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.0, cols * 1.4), rows * 1.5 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, m) in enumerate(zip(axes.flat, maps)):
        ax.imshow(m.numpy(), cmap="viridis")
        ax.set_title(f"{k}", fontsize=8)
    fig.suptitle(f"{name} {tuple(maps.shape[1:])}: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def _one_network(classifier: Classifier) -> Classifier:
    """`classifier`, refused in one line when it is an ensemble: show draws one network's layers."""
    if classifier.members:
        raise UsageError(f"{classifier.source} is an ensemble of {len(classifier.members)} networks; show draws one "
                         f"network's layers: mnist-cnn show {classifier.members[0].source}")
    return classifier


def show_run(run: str | Path, index: int | None = 0, image: str | Path | None = None, out_dir: str | Path | None = None,
             data_dir: str | None = None, device: str = "cpu", tensorboard: bool = True) -> ShowResult:
    """Write filters-<layer>.png for each conv layer and <image>-<layer>.png for each feature-map
    layer of one image (test image `index`, or the file `image`), into out_dir (default RUN/show)."""
    if is_onnx(run):
        raise UsageError("show needs the PyTorch run (its layers), not an exported .onnx file")
    classifier = _one_network(load_classifier(run, device))
    model = classifier.model
    true = None
    if image is not None:
        pixels = preprocess(image).image  # (1, 28, 28) uint8
        source, stem = str(image), Path(image).stem
    else:
        test = load_split(classifier.config, "test", data_dir)
        if not 0 <= index < len(test.labels):
            raise UsageError(f"--index {index} is outside the test set (0..{len(test.labels) - 1})")
        pixels, true = test.images[index], classifier.class_names[int(test.labels[index])]
        source, stem = f"test #{index}", f"test{index}"
    device_ = next(model.parameters()).device
    maps, logits = feature_maps(model, to_input(pixels[None].to(device_), channels_last=False))
    probabilities = torch.softmax(logits.double(), 0)
    k = int(probabilities.argmax())
    result = ShowResult(source, true, classifier.class_names[k], float(probabilities[k]), list(maps))

    out = OutputDir(out_dir or classifier.output_dir("show"))
    convs = conv_layers(model)
    names = [f"filters-{n}.png" for n, _ in convs] + [f"{stem}-input.png"] + [f"{stem}-{n}.png" for n in maps]
    paths = iter(out.claim(names))
    caption = f"{source}" + (f", true {true}" if true else "") + f", predicted {result.predicted} ({result.confidence:.1%})"
    figures: dict[str, object] = {}
    for n, conv in convs:
        path = next(paths)
        figures[f"filters/{n}"] = plot_kernels(n, conv, path)
        result.files[f"filters/{n}"] = str(path)
    path = next(paths)
    figures[f"{stem}/input"] = plot_feature_maps("input", to_input(pixels, channels_last=False), path, caption)
    result.files["input"] = str(path)
    for n, m in maps.items():
        path = next(paths)
        figures[f"{stem}/{n}"] = plot_feature_maps(n, m, path, caption)
        result.files[n] = str(path)
    if tensorboard:
        writer = out.tensorboard_writer(replace=False)  # earlier images stay visible next to new ones
        for tag, fig in figures.items():
            writer.add_figure(tag, fig, classifier.global_step, close=False)
        writer.close()
        result.files["tensorboard"] = str(out.path)
    close_figures(*figures.values())
    return result
