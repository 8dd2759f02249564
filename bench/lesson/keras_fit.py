"""The lesson's network and recipe in Keras 3 `model.fit`, as many users would write it today.

Runs under .venv-lesson (tensorflow-cpu + the Keras 3 it brings; bench/lesson/requirements.txt).
Same as the lesson: layers (conv 5x5x6 SAME, max-pool 2x2/2 SAME, ReLU, conv 5x5x16, max-pool,
ReLU, flatten 784, dense 128 + ReLU, dense 10), truncated-normal(0.05) kernels and 0.05 biases,
softmax cross-entropy, Adam(1e-4), batch 100 (550 steps an epoch, reshuffled each epoch),
validation on the 5,000 validation images every epoch, TensorBoard logs.
Keras's usual way rather than the lesson's: integer labels with a sparse loss from logits (the
same math as one-hot softmax_cross_entropy_with_logits), training accuracy from the training
forward pass itself (the lesson runs a second one), per-epoch TensorBoard scalars (the
callback's default update_freq="epoch"), validation at Keras's default batch (= batch_size),
and jit_compile left at its default ("auto", which Keras turns off on a CPU-only machine).
The epoch time runs from on_epoch_begin to on_epoch_end of the last callback, so it includes
validation and the TensorBoard writes, as the lesson's does.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ info lines off the console
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def init() -> dict:
    """The lesson's initial values; a fresh initializer per layer so each draws its own numbers."""
    return dict(kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.05),
                bias_initializer=keras.initializers.Constant(0.05))


def build_model() -> keras.Model:
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(6, 5, padding="same", **init()),
        keras.layers.MaxPooling2D(2, 2, padding="same"),
        keras.layers.ReLU(),
        keras.layers.Conv2D(16, 5, padding="same", **init()),
        keras.layers.MaxPooling2D(2, 2, padding="same"),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu", **init()),
        keras.layers.Dense(10, **init()),
    ])


class EpochTimer(keras.callbacks.Callback):
    """Prints one JSON line per epoch for bench/lesson/run.py (put it after TensorBoard)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self.start
        print(json.dumps({"epoch": epoch + 1, "seconds": seconds,
                          "train_accuracy": float(logs["accuracy"]),
                          "validation_accuracy": float(logs["val_accuracy"])}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help=".npz written by bench/lesson/run.py")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="TF intra- and inter-op threads")
    p.add_argument("--logdir", required=True, help="TensorBoard callback log directory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    # Must be set before TF runs its first op.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)
    with np.load(args.data) as z:
        x_train = z["train_images"].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
        x_val = z["validation_images"].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
        y_train, y_val = z["train_labels"], z["validation_labels"]
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    print(json.dumps({"jit_compile": bool(model.jit_compile)}), flush=True)
    model.fit(x_train, y_train, batch_size=100, epochs=args.epochs, validation_data=(x_val, y_val),
              shuffle=True, verbose=0,
              callbacks=[keras.callbacks.TensorBoard(log_dir=args.logdir), EpochTimer()])


if __name__ == "__main__":
    main()
