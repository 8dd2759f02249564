"""The real `mnist-cnn` CLI on tiny synthetic data, run as a subprocess by test_resume.py.

    python tests/resume_driver.py train --out DIR --name NAME --epochs 3 --batch-size 50 ...
    python tests/resume_driver.py train --resume DIR

Stand-ins that change no number the run computes, so its weights must equal a plain run's:
- `load_dataset` returns synthetic.toy_dataset() (real MNIST is far too slow for a kill test);
- `train_step` sleeps DRIVER_STEP_DELAY_S (seconds) before each step and prints `step K`
  (K counts this process's steps) after it, so a test can kill at a chosen or random step;
- with DRIVER_SLOW_CHECKPOINT_AT=K, the fsync of the checkpoint temp file written after step K
  prints `writing-checkpoint` and sleeps 60 s first: a test kills the process while the new
  checkpoint is written but not yet renamed over the old one.
- with DRIVER_EMULATE_NATIVE_BF16=1, the precision policy takes the CPU for one with AMX-BF16, so
  `--amp bf16` runs (on torch's emulated bf16 kernels) on CPUs without it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mnist_cnn.data  # noqa: E402
import mnist_cnn.precision  # noqa: E402
import mnist_cnn.train  # noqa: E402
from mnist_cnn.cli import main  # noqa: E402
from synthetic import toy_dataset  # noqa: E402

STEP_DELAY_S = float(os.environ.get("DRIVER_STEP_DELAY_S", "0"))
SLOW_CHECKPOINT_AT = int(os.environ.get("DRIVER_SLOW_CHECKPOINT_AT", "0"))
steps_done = 0


def fake_load_dataset(name="mnist", data_dir=None, validation_size=5000, progress=None):
    return toy_dataset()


real_train_step = mnist_cnn.train.train_step


def marked_train_step(*args, **kwargs):
    global steps_done
    if STEP_DELAY_S:
        time.sleep(STEP_DELAY_S)
    out = real_train_step(*args, **kwargs)
    steps_done += 1
    print(f"step {steps_done}", flush=True)
    return out


real_fsync = os.fsync


def slow_fsync(fd: int) -> None:
    if SLOW_CHECKPOINT_AT and steps_done == SLOW_CHECKPOINT_AT:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(target).startswith(".checkpoint.pt."):
            print("writing-checkpoint", flush=True)
            time.sleep(60)
    real_fsync(fd)


mnist_cnn.data.load_dataset = fake_load_dataset
mnist_cnn.train.train_step = marked_train_step
os.fsync = slow_fsync
if os.environ.get("DRIVER_EMULATE_NATIVE_BF16") == "1":
    mnist_cnn.precision.cpu_bf16_flags = lambda: ({"amx_bf16": True, "avx512_bf16": False}, "emulated")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
