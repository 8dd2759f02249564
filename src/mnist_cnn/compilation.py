"""The compile policy: `--compile {auto,on,off}` for the training model.

torch.compile costs tens of seconds before the first step and then saves a fraction of every
step, for some networks and CPUs only. `auto` asks in two stages. First, for a network where
compiling has won somewhere (COMPILE_SAVING), it times a few eager steps (`step_seconds`) and
checks that steps x seconds x that saving would repay COMPILE_COST_S. Then it times compiled steps
on a copy of the model (`compiled_step_seconds`) and compiles only if they are faster here:
the gain differs between CPUs, and torch.compile's cache makes the run's own compile of the same
network free afterwards. The lesson's runs (preset seed, the seed network) are never compiled by
`auto`. The resolved "on"/"off" goes into
config.json and the checkpoint, so a resume keeps it; checkpoints always hold the un-compiled
module's state_dict (plain names, no `_orig_mod.` prefix), so compiled and eager runs read the
same files.
"""
from __future__ import annotations

import shutil
from typing import Callable

import torch

from mnist_cnn.errors import UsageError

# Seconds from torch.compile to the first compiled step, rounded up: 18-27 s for resnet depth 1,
# width 24 on a 2-vCPU Xeon, 8 s for the seed network (issue 22, docs/speed.md), 40 s for a
# two-layer toy on a busy 2-core EPYC.
COMPILE_COST_S = 30.0

# Fraction of an eager float32 step that compiling saved, only for networks where a measurement
# showed a gain (issue 22, 2-vCPU Xeon: resnet 1:24, 150 -> 128 ms a step; under bf16, 85 -> 59 ms).
# The seed network lost (6.8 vs 5.7 ms): it is absent, so `auto` never compiles it. Add a network
# here only with a measurement (bench/bench.py --compile-table).
COMPILE_SAVING = {"resnet": 0.15}

# `auto` needs the saving to exceed the cost by this factor: a guard against a noisy step timing.
PAYBACK_MARGIN = 2.0

# `auto` keeps compiling only when a compiled step timed here is at least this much faster than an
# eager one: less is within the two timings' noise.
MEASURED_GAIN = 0.05


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot run here (one phrase), or None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile on CUDA needs Triton, which is not installed"
    try:  # inductor generates C++ for the CPU and needs a compiler for it
        from torch._inductor.cpp_builder import get_cpp_compiler

        compiler = get_cpp_compiler()
    except Exception:  # inductor raises several types when no compiler is found
        compiler = None
    if not compiler or not shutil.which(compiler):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) and none was found"
    return None


def resolve_compile(choice: str, preset: str, model: str, steps_left: int, device: torch.device,
                    step_seconds: Callable[[], float], compiled_step_seconds: Callable[[], float]) -> str:
    """The config's compile choice ("auto", "on", "off") resolved to "on" or "off".
    `step_seconds()` times an eager step and `compiled_step_seconds()` a compiled one (it compiles);
    they are called only when `auto` has to weigh them."""
    if choice == "on":
        if reason := compile_unavailable_reason(device):
            raise UsageError(f"--compile on: {reason}; use --compile off")
        return "on"
    # The cheap checks first: looking for a compiler imports inductor, which takes seconds.
    if choice == "off" or preset == "seed" or model not in COMPILE_SAVING or compile_unavailable_reason(device):
        return "off"
    eager_s = step_seconds()
    if steps_left * eager_s * COMPILE_SAVING[model] <= PAYBACK_MARGIN * COMPILE_COST_S:
        return "off"  # too short to repay compiling even where it gains most
    return "on" if compiled_step_seconds() < (1 - MEASURED_GAIN) * eager_s else "off"


def resume_compile(saved: str, device: torch.device, print_fn: Callable[[str], None]) -> str:
    """A resumed run's compile choice: the saved one, or eager with one line saying the rest of the
    run cannot be bit-identical when a compiled run resumes where torch.compile cannot run."""
    if saved != "on":
        return "off"
    reason = compile_unavailable_reason(device)
    if reason is None:
        return "on"
    print_fn(f"Note: this run was compiled but {reason}, so it resumes eager: the remaining steps are "
             "not bit-identical to an unbroken compiled run")
    return "off"
