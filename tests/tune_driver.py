"""The real `mnist-cnn` CLI (tune, train) on tiny synthetic data, run as a subprocess by test_tune.py.

    python tests/tune_driver.py tune --study S --trials 3 --out DIR --epochs 2 ...

Stand-ins: `load_dataset` returns a 200-image synthetic.toy_dataset (real MNIST is far too slow
for kill tests); with TUNE_DRIVER_STEP_DELAY_S each training step sleeps that long first, so a
test has time to kill a trial in the middle; with TUNE_DRIVER_DELAY_AFTER_STEPS=N too, the first
N steps of the process (say, a first trial nobody waits for) do not sleep. Patched at import, so `--jobs` workers (spawned
interpreters that import this file as __mp_main__) get the same stand-ins.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mnist_cnn.data  # noqa: E402
import mnist_cnn.train  # noqa: E402
from mnist_cnn.cli import main  # noqa: E402
from synthetic import toy_dataset  # noqa: E402

STEP_DELAY_S = float(os.environ.get("TUNE_DRIVER_STEP_DELAY_S", "0"))
DELAY_AFTER_STEPS = int(os.environ.get("TUNE_DRIVER_DELAY_AFTER_STEPS", "0"))
real_train_step = mnist_cnn.train.train_step
steps_done = 0


def fake_load_dataset(name="mnist", data_dir=None, validation_size=5000, progress=None):
    return toy_dataset(n_train=200, n_validation=100, n_test=100)


def slow_train_step(*args, **kwargs):
    global steps_done
    if steps_done >= DELAY_AFTER_STEPS:
        time.sleep(STEP_DELAY_S)
    steps_done += 1
    return real_train_step(*args, **kwargs)


mnist_cnn.data.load_dataset = fake_load_dataset
if STEP_DELAY_S:
    mnist_cnn.train.train_step = slow_train_step

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
