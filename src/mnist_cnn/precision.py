"""The precision policy: where bfloat16 autocast runs, decided from what the hardware does natively.

`--amp auto` (the default) runs the forward pass and the loss under bf16 autocast where the device
computes bf16 natively (CUDA with bf16 support, or a CPU with AMX-BF16 or AVX512-BF16) and in
float32 everywhere else: on CPUs without those units bf16 is emulated and 10-100x slower
(pytorch/pytorch#118499). Weights, optimizer state and checkpoints stay float32 in every case.
`--preset seed` always trains in float32 so its golden replay (tests/test_golden.py) stays exact.

`resolve_amp` turns the config's choice into "off" or "bf16" once, before a run directory exists;
the resolved value is what config.json, environment.json and the checkpoint record, so a resume
keeps it. Inference (evaluate, predict, serve) follows the run's resolved choice where the device
does bf16 natively, and runs float32 elsewhere (`inference_bf16`).
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import torch

from mnist_cnn.errors import UsageError

# /proc/cpuinfo flag names of the two CPU features that make bf16 matrix work native.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
SLOW_EMULATION = "bf16 is emulated there and 10-100x slower than float32 (pytorch/pytorch#118499)"


@dataclass(frozen=True)
class Bf16Support:
    """Whether a device computes bfloat16 natively, and what decided it (written to environment.json)."""

    native: bool
    reason: str                       # e.g. "CPU has AMX-BF16", "CPU has neither AMX-BF16 nor AVX512-BF16"
    cpu_capability: str = ""          # torch's dispatch level: "AVX2", "AVX512", ...
    cpu_flags: dict[str, bool] = dataclasses.field(default_factory=dict)  # NATIVE_BF16_FLAGS -> present
    source: str = ""                  # where the flags came from: "torch.cpu" or "/proc/cpuinfo"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cpu_bf16_flags() -> tuple[dict[str, bool], str]:
    """({flag: present} for NATIVE_BF16_FLAGS, source), from the CPU itself: torch's own CPUID
    checks where this torch has them, else the Linux kernel's /proc/cpuinfo flags."""
    checks = {"amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    if all(callable(check) for check in checks.values()):
        # Every CPU with AMX tiles so far (Sapphire Rapids on) also has AMX-BF16.
        return {flag: bool(check()) for flag, check in checks.items()}, "torch.cpu"
    return _proc_cpuinfo_flags(), "/proc/cpuinfo"


def _proc_cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> dict[str, bool]:
    try:
        text = path.read_text(errors="replace")
    except OSError:  # not Linux: nothing to read, so nothing is claimed
        return {flag: False for flag in NATIVE_BF16_FLAGS}
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break  # every core of one machine reports the same flags
    return {flag: flag in flags for flag in NATIVE_BF16_FLAGS}


def bf16_support(device: torch.device) -> Bf16Support:
    """Native bfloat16 on `device`: CUDA where the GPU has it, a CPU with AMX-BF16 or AVX512-BF16."""
    if device.type == "cuda":
        # including_emulation=False: pre-Ampere GPUs emulate bf16, slowly.
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return Bf16Support(native, "CUDA GPU with bf16" if native else "this CUDA GPU has no native bf16")
    flags, source = cpu_bf16_flags()
    found = [name.upper().replace("_", "-") for name, present in flags.items() if present]
    reason = f"CPU has {' and '.join(found)}" if found else "CPU has neither AMX-BF16 nor AVX512-BF16"
    return Bf16Support(bool(found), reason, torch.backends.cpu.get_cpu_capability(), flags, source)


def resolve_amp(amp: str, preset: str, device: torch.device, resumed: bool = False) -> str:
    """The config's amp choice ("auto", "off", "bf16") resolved for `device`: "off" or "bf16".
    Refuses, in one UsageError line, bf16 where it is not native and bf16 with preset seed."""
    if preset == "seed":
        if amp == "bf16":
            raise UsageError("preset seed is the lesson exactly and always trains in float32 (its golden "
                             "replay must stay exact); drop --amp bf16, or start from --preset default")
        return "off"
    if amp == "off":
        return "off"
    support = bf16_support(device)
    if amp == "auto":
        return "bf16" if support.native else "off"
    if not support.native:
        if resumed:
            raise UsageError(f"this run trained in bf16 and cannot resume here: the {support.reason}, so "
                             f"{SLOW_EMULATION}; resume it on a machine with native bf16 (CUDA, AMX-BF16 or "
                             "AVX512-BF16)")
        raise UsageError(f"amp bf16 needs native bfloat16 and the {support.reason}: {SLOW_EMULATION}; "
                         "use --amp auto (float32 here) or --amp off")
    return "bf16"


def inference_bf16(config: dict[str, Any], device: torch.device) -> bool:
    """Whether a trained model runs under bf16 autocast for inference: when its run trained in bf16
    and this device does bf16 natively. Runs trained in float32 (preset seed, --amp off, or auto on
    a machine without native bf16) are evaluated in float32, as they were validated."""
    return config.get("amp") == "bf16" and bf16_support(device).native


def autocast(device: torch.device, bf16: bool) -> ContextManager:
    """bf16 autocast on `device` when `bf16`, else nothing (float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def precision_info(amp: str, device: torch.device) -> dict[str, Any]:
    """What environment.json records: the resolved choice and the capability that decided it."""
    return {"amp": amp, "native_bf16": bf16_support(device).as_dict()}
