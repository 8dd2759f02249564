"""mnist-cnn: train, inspect and use small convolutional networks on MNIST-family images.

The public Python API (each name documented with a runnable example, `help(mnist_cnn.NAME)`):

    from mnist_cnn import load_dataset, make_config, train_model, load_run, classify

    ds = load_dataset("mnist")                      # ds.train / .validation / .test: images, labels
    run = train_model(make_config("seed", epochs=3), dataset=ds, out_dir="runs")
    plot_history(run)                               # accuracy and loss per epoch (a Figure)
    net = load_run(run.run_dir)                     # or a saved run directory, or an .onnx file
    classify(net, "my-digit.png").names             # -> ['7']
    evaluate_model(net, "test").accuracy            # plus confusion matrix and worst mistakes

    data        load_dataset, dataset_from_arrays
    network     create_model, layer_table, format_layer_table
    training    preset_names, make_config, train_model
    using       load_run, to_mnist, classify, Predictions
    evaluating  evaluate_model, format_evaluation
    TensorBoard tensorboard_scalars, export_csv
    figures     plot_digits, plot_history, plot_filters, plot_confusion_matrix,
                plot_worst_mistakes, plot_scalars

`import mnist_cnn` stays light: the names load (with PyTorch) on first use. The lesson as a
notebook: notebooks/lesson.ipynb. The command line: `mnist-cnn --help`.
"""

from mnist_cnn.version import __version__

__all__ = [
    "load_dataset", "dataset_from_arrays",
    "create_model", "layer_table", "format_layer_table",
    "preset_names", "make_config", "train_model",
    "load_run", "to_mnist", "classify", "Predictions",
    "evaluate_model", "format_evaluation",
    "tensorboard_scalars", "export_csv",
    "plot_digits", "plot_history", "plot_filters", "plot_confusion_matrix", "plot_worst_mistakes",
    "plot_scalars",
]


def __getattr__(name: str):
    # PEP 562: the API module (and PyTorch, ~1-2 s) is imported on first use of a public name.
    if name in __all__:
        from mnist_cnn import api  # at first use, not at import: keeps `import mnist_cnn` free of torch

        return getattr(api, name)
    raise AttributeError(f"module 'mnist_cnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
