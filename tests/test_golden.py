"""Golden replay: the `seed` preset's math against one epoch of the lesson's own TensorFlow program.

tests/data/lesson_tf_trace.npz (provenance: tests/data/README.md) holds the lesson's initial
weights, its batch order and the loss and accuracy of each of its 550 steps. Starting from those
weights and feeding the same batches, the `seed` network, optimizer and step function must follow
the lesson step by step. A change to the preset's init-independent math (optimizer, loss, input
scaling, layer order) fails here instead of drifting silently.

The trace was recorded once, by TensorFlow on another machine, so the replay is compared within
tolerances (per-step loss, accuracy), not bit for bit: they hold on AMD EPYC and Intel Xeon alike.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn import config as cfg
from mnist_cnn.inference import loss_and_accuracy, to_input
from mnist_cnn.models import create_model
from mnist_cnn.train import train_step
from mnist_cnn.trainstate import make_optimizer

TRACE = Path(__file__).parent / "data" / "lesson_tf_trace.npz"
BATCH = 100  # the trace's batch size; also the seed preset's (asserted below)


def lesson_weights(trace: dict[str, np.ndarray], prefix: str = "init") -> dict[str, torch.Tensor]:
    """The trace's TensorFlow-layout weights as a SeedNet state_dict (layouts per the trace README)."""
    t = {k: torch.from_numpy(np.asarray(trace[f"{prefix}_{k}"])) for k in
         ("conv1_weight", "conv1_bias", "conv2_weight", "conv2_bias", "fc1_weight", "fc1_bias",
          "fc2_weight", "fc2_bias")}
    return {
        "conv1.weight": t["conv1_weight"].permute(3, 2, 0, 1),  # HWIO -> OIHW
        "conv1.bias": t["conv1_bias"],
        "conv2.weight": t["conv2_weight"].permute(3, 2, 0, 1),
        "conv2.bias": t["conv2_bias"],
        # TF flattens (h, w, c); PyTorch's Flatten after NCHW is (c, h, w).
        "fc1.weight": t["fc1_weight"].reshape(7, 7, 16, 128).permute(3, 2, 0, 1).reshape(128, 784),
        "fc1.bias": t["fc1_bias"],
        "fc2.weight": t["fc2_weight"].t(),
        "fc2.bias": t["fc2_bias"],
    }


@pytest.fixture(scope="module")
def trace() -> dict[str, np.ndarray]:
    with np.load(TRACE) as f:
        return {k: f[k] for k in f.files}


def test_trace_weights_convert_to_the_seed_network(trace):
    model = create_model("seed", num_classes=10)
    state = lesson_weights(trace)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # strict: every parameter comes from the trace


@pytest.mark.slow  # ~65 s on one busy CPU core: 550 steps plus a second forward pass each
def test_seed_preset_replays_the_lessons_epoch(trace, real_mnist_env):
    from mnist_cnn.data import load_dataset

    config = cfg.make_config("seed")
    assert config.batch_size == BATCH and config.optimizer == "adam" and config.lr == 1e-4
    assert config.schedule == "constant" and config.label_smoothing == 0.0 and not config.ema
    # One thread: the same tolerance holds with torch's default thread count, but on a shared
    # machine one thread finishes sooner and its float32 summation order is fixed.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = load_dataset("mnist", validation_size=5000, progress=False)  # train = file images 5000..59999
        losses, after_accuracy, val_accuracy = replay(trace, config, dataset)
    finally:
        torch.set_num_threads(previous_threads)

    golden_loss = trace["step_loss"].astype(np.float64)
    diff = np.abs(losses - golden_loss)
    assert len(losses) == len(golden_loss) == 550
    assert diff[:100].max() < 1e-3, f"steps 0-99: max |loss diff| {diff[:100].max():.2e} at step {diff[:100].argmax()}"
    assert diff.max() < 2e-2, f"all steps: max |loss diff| {diff.max():.2e} at step {diff.argmax()}"
    golden_val = float(trace["validation_accuracy"])
    assert abs(val_accuracy - golden_val) < 0.003, (val_accuracy, golden_val)
    golden_train = float(trace["step_accuracy_after_update"].astype(np.float64).mean())
    assert abs(after_accuracy.mean() - golden_train) < 0.003, (after_accuracy.mean(), golden_train)
    print(f"max |loss diff| steps 0-99 {diff[:100].max():.2e}, "
          f"all {diff.max():.2e}; validation {val_accuracy:.4f} vs {golden_val:.4f}; "
          f"post-update train accuracy {after_accuracy.mean():.4f} vs {golden_train:.4f}")


def replay(trace: dict[str, np.ndarray], config: cfg.TrainConfig, dataset) -> tuple[np.ndarray, np.ndarray, float]:
    """550 steps of the preset's own optimizer and step function on the trace's batches.

    Returns per-step losses, per-step post-update batch accuracies, and validation accuracy."""
    torch.manual_seed(0)  # nothing below draws random numbers once the trace's weights are in; belt and braces
    model = create_model(config.model, num_classes=len(dataset.class_names))
    model.load_state_dict(lesson_weights(trace))
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(config, model)
    order = torch.from_numpy(trace["order"].astype(np.int64))
    train_x, train_y = dataset.train.images, dataset.train.labels
    assert len(train_y) == len(order) == 55000
    losses, after = [], []
    for step in range(len(order) // BATCH):
        idx = order[step * BATCH:(step + 1) * BATCH]
        images, labels = to_input(train_x[idx], config.channels_last), train_y[idx]
        loss, _ = train_step(model, optimizer, images, labels, config.label_smoothing)
        losses.append(float(loss))
        with torch.no_grad():  # the lesson's "training accuracy": a second forward pass after the update
            after.append(float((model(images).argmax(1) == labels).float().mean()))
    _, val_accuracy = loss_and_accuracy(model, dataset.validation.images, dataset.validation.labels,
                                     channels_last=config.channels_last)
    return np.array(losses), np.array(after), val_accuracy
