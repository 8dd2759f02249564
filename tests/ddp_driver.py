"""`mnist-cnn` (the real CLI) with one test-only hook, for launching under torchrun from
test_distributed.py:

    DDP_DRIVER_STOP_AFTER=K python -m torch.distributed.run ... tests/ddp_driver.py train ...

stops training after K optimizer steps the way a signal does (checkpoint, exit 130), but at a
known step on every rank, so a test can resume the run and compare it with an unbroken one.
"""
from __future__ import annotations

import functools
import os
import sys

import mnist_cnn.train
from mnist_cnn.cli import main

if os.environ.get("DDP_DRIVER_STOP_AFTER"):
    mnist_cnn.train.train = functools.partial(mnist_cnn.train.train,
                                              stop_after_steps=int(os.environ["DDP_DRIVER_STOP_AFTER"]))
raise SystemExit(main(sys.argv[1:]))
