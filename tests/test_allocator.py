"""allocator.keep_freed_memory: training steps stop page-faulting their buffers back in."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from mnist_cnn.allocator import keep_freed_memory

STEPS = """
import json, resource, sys, torch
torch.set_num_threads(2)  # the worker threads of a 2-core machine: their arenas fault most
from mnist_cnn.allocator import keep_freed_memory
from mnist_cnn.models import create_model
from mnist_cnn.train import train_step
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
torch.manual_seed(0)
model = create_model("seed").to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
x = torch.rand(100, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (100,))
for _ in range(10):  # warm up: the first steps allocate for good
    train_step(model, optimizer, x, y)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(60):
    train_step(model, optimizer, x, y)
print(json.dumps({"tuned": tuned, "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 60}))
"""


def faults_per_step(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_training_steps_stop_page_faulting():
    # Untuned, glibc's dynamic threshold makes most runs map their large activation and gradient
    # buffers afresh every step (150-1,100 faults a step in our runs) and lets the odd run settle
    # (0-5); tuned, they come from the heap every time (0-12 a step in our runs).
    plain = [faults_per_step("plain")["faults_per_step"] for _ in range(3)]
    tuned = [faults_per_step("tuned") for _ in range(2)]
    assert all(t["tuned"] is True for t in tuned)
    assert max(t["faults_per_step"] for t in tuned) < 25, (plain, tuned)
    assert max(plain) > 40, plain


def test_keep_freed_memory_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
