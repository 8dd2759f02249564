"""The 2019 lesson's TensorFlow program (/work/shared/seed/000_*.txt, steps 4-16), for `tf.compat.v1`.

This is the reference program that `make bench-lesson` times against `mnist-cnn train --preset
seed`. It runs under .venv-lesson (tensorflow-cpu, bench/lesson/requirements.txt), never under the
project's .venv.

Kept as the lesson wrote it:
- the graph: conv 5x5x6 SAME + bias, max-pool 2x2/2 SAME, ReLU, conv 5x5x16 SAME + bias, max-pool,
  ReLU, reshape to 784, FC 128 + ReLU, FC 10; weights truncated_normal(stddev=0.05), biases
  constant 0.05; softmax / argmax; mean softmax_cross_entropy_with_logits; AdamOptimizer(1e-4);
- the variable/name scopes, the two FileWriters (train and validation), add_graph, the merged
  loss + accuracy summaries;
- the session calls per step: optimizer, then accuracy on the same batch (a second forward
  pass), then the merged summary (a third), written with the lesson's global step;
- per epoch: 550 steps of batch 100, the mean batch accuracy, one summary + accuracy run over the
  whole 5,000-image validation set, and the epoch time taken exactly where the lesson takes it
  (before the first batch, after the validation summary is written).

Adapted (TF 1.x APIs that are gone or renamed):
- data: tensorflow.examples.tutorials.mnist no longer exists; `DataSet` below reproduces its
  next_batch (a fresh shuffle each epoch; 55,000 / 100 has no remainder) over arrays from an
  .npz the driver writes with the project's data chain (same 55,000/5,000 split as read_data_sets:
  validation = the first 5,000 training images), scaled to [0, 1] float32 and one-hot as
  read_data_sets(one_hot=True) gave them;
- `tf.X` -> `tf.compat.v1.X` with eager execution off; `argmax(dimension=1)` -> `axis=1`;
- the session gets intra/inter-op thread counts (--threads) so every program uses the same;
- logs go to --logdir instead of ./Training_FileWriter and ./Validation_FileWriter;
- 100 epochs -> --epochs; the per-epoch print becomes one JSON line (seconds, accuracies) that
  bench/lesson/run.py reads; the time is not rounded to whole seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ info lines off the console

import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1


class DataSet:
    """next_batch of the lesson's tensorflow.examples.tutorials.mnist DataSet (shuffle=True)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
        self.images, self.labels = images, labels  # (N, 784) float32 in [0, 1]; (N, 10) one-hot
        self._rng = np.random.RandomState(seed)
        self._order = np.arange(len(labels))
        self._index = len(labels)  # forces a shuffle before the first batch, as TF1 did

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index + batch_size > len(self.labels):
            self._rng.shuffle(self._order)
            self._index = 0
        rows = self._order[self._index:self._index + batch_size]
        self._index += batch_size
        return self.images[rows], self.labels[rows]


def load_npz(path: str) -> dict[str, np.ndarray]:
    """The driver's .npz (uint8 images, int64 labels) as read_data_sets(one_hot=True) returned it."""
    with np.load(path) as z:
        out = {}
        for split in ("train", "validation"):
            out[f"{split}_images"] = z[f"{split}_images"].reshape(-1, 784).astype(np.float32) / 255.0
            out[f"{split}_labels"] = np.eye(10, dtype=np.float32)[z[f"{split}_labels"]]
        return out


def new_conv_layer(input, num_input_channels, filter_size, num_filters, name):
    with tf1.variable_scope(name):
        shape = [filter_size, filter_size, num_input_channels, num_filters]
        weights = tf1.Variable(tf1.truncated_normal(shape, stddev=0.05))
        biases = tf1.Variable(tf1.constant(0.05, shape=[num_filters]))
        layer = tf1.nn.conv2d(input=input, filter=weights, strides=[1, 1, 1, 1], padding="SAME")
        layer += biases
        return layer, weights


def new_pool_layer(input, name):
    with tf1.variable_scope(name):
        return tf1.nn.max_pool(value=input, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")


def new_relu_layer(input, name):
    with tf1.variable_scope(name):
        return tf1.nn.relu(input)


def new_fc_layer(input, num_inputs, num_outputs, name):
    with tf1.variable_scope(name):
        weights = tf1.Variable(tf1.truncated_normal([num_inputs, num_outputs], stddev=0.05))
        biases = tf1.Variable(tf1.constant(0.05, shape=[num_outputs]))
        return tf1.matmul(input, weights) + biases


def build_graph() -> dict:
    """Steps 4 and 9-15 of the lesson: placeholders, network, cost, Adam, accuracy, summaries."""
    x = tf1.placeholder(tf1.float32, shape=[None, 28 * 28], name="X")
    x_image = tf1.reshape(x, [-1, 28, 28, 1])
    y_true = tf1.placeholder(tf1.float32, shape=[None, 10], name="y_true")
    y_true_cls = tf1.argmax(y_true, axis=1)

    layer_conv1, _ = new_conv_layer(input=x_image, num_input_channels=1, filter_size=5, num_filters=6,
                                    name="conv1")
    layer_pool1 = new_pool_layer(layer_conv1, name="pool1")
    layer_relu1 = new_relu_layer(layer_pool1, name="relu1")
    layer_conv2, _ = new_conv_layer(input=layer_relu1, num_input_channels=6, filter_size=5, num_filters=16,
                                    name="conv2")
    layer_pool2 = new_pool_layer(layer_conv2, name="pool2")
    layer_relu2 = new_relu_layer(layer_pool2, name="relu2")
    num_features = layer_relu2.get_shape()[1:4].num_elements()  # 7 * 7 * 16 = 784
    layer_flat = tf1.reshape(layer_relu2, [-1, num_features])
    layer_fc1 = new_fc_layer(layer_flat, num_inputs=num_features, num_outputs=128, name="fc1")
    layer_relu3 = new_relu_layer(layer_fc1, name="relu3")
    layer_fc2 = new_fc_layer(input=layer_relu3, num_inputs=128, num_outputs=10, name="fc2")

    with tf1.variable_scope("Softmax"):
        y_pred = tf1.nn.softmax(layer_fc2)
        y_pred_cls = tf1.argmax(y_pred, axis=1)
    with tf1.name_scope("cross_ent"):
        cross_entropy = tf1.nn.softmax_cross_entropy_with_logits(logits=layer_fc2, labels=y_true)
        cost = tf1.reduce_mean(cross_entropy)
    with tf1.name_scope("optimizer"):
        optimizer = tf1.train.AdamOptimizer(learning_rate=1e-4).minimize(cost)
    with tf1.name_scope("accuracy"):
        correct_prediction = tf1.equal(y_pred_cls, y_true_cls)
        accuracy = tf1.reduce_mean(tf1.cast(correct_prediction, tf1.float32))
    tf1.summary.scalar("loss", cost)
    tf1.summary.scalar("accuracy", accuracy)
    return dict(x=x, y_true=y_true, optimizer=optimizer, accuracy=accuracy,
                merged_summary=tf1.summary.merge_all())


def run(data: dict[str, np.ndarray], epochs: int, threads: int, logdir: str, seed: int) -> None:
    """Step 16 of the lesson: the session loop, printing one JSON line per epoch."""
    tf1.set_random_seed(seed)
    g = build_graph()
    x, y_true, accuracy, merged_summary = g["x"], g["y_true"], g["accuracy"], g["merged_summary"]
    train = DataSet(data["train_images"], data["train_labels"], seed)
    writer = tf1.summary.FileWriter(os.path.join(logdir, "Training_FileWriter"))
    writer1 = tf1.summary.FileWriter(os.path.join(logdir, "Validation_FileWriter"))
    batch_size = 100
    steps = int(len(train.labels) / batch_size)  # 550
    session_config = tf1.ConfigProto(intra_op_parallelism_threads=threads,
                                     inter_op_parallelism_threads=threads)
    with tf1.Session(config=session_config) as sess:
        sess.run(tf1.global_variables_initializer())
        writer.add_graph(sess.graph)
        for epoch in range(epochs):
            start_time = time.time()
            train_accuracy = 0
            for batch in range(0, steps):
                x_batch, y_true_batch = train.next_batch(batch_size)
                feed_dict_train = {x: x_batch, y_true: y_true_batch}
                sess.run(g["optimizer"], feed_dict=feed_dict_train)
                train_accuracy += sess.run(accuracy, feed_dict=feed_dict_train)
                summ = sess.run(merged_summary, feed_dict=feed_dict_train)
                writer.add_summary(summ, epoch * steps + batch)
            train_accuracy /= steps
            summ, vali_accuracy = sess.run([merged_summary, accuracy],
                                           feed_dict={x: data["validation_images"],
                                                      y_true: data["validation_labels"]})
            writer1.add_summary(summ, epoch)
            end_time = time.time()
            print(json.dumps({"epoch": epoch + 1, "seconds": end_time - start_time,
                              "train_accuracy": float(train_accuracy),
                              "validation_accuracy": float(vali_accuracy)}), flush=True)
    writer.close()
    writer1.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help=".npz written by bench/lesson/run.py")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="intra- and inter-op threads of the session")
    p.add_argument("--logdir", required=True, help="parent of Training_FileWriter/ and Validation_FileWriter/")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    tf1.disable_eager_execution()
    run(load_npz(args.data), args.epochs, args.threads, args.logdir, args.seed)


if __name__ == "__main__":
    main()
