"""Keep freed tensor memory in the process between training steps (speed, issue #4).

Every training step allocates and frees the same few megabytes of activations and gradients.
With glibc's default settings, blocks of a few hundred KiB and up are handed back to the kernel
when freed (`munmap`, or trimming the top of the heap) and the next step takes them back page by
page: about 1,300 page faults a step for the lesson's network at batch 100, 20-30% of a 2-core
CPU step (measured with getrusage; tests/test_allocator.py checks the fault count falls).

`keep_freed_memory()` raises two glibc thresholds with `mallopt`, as PyTorch's CPU performance
guide suggests doing with jemalloc/tcmalloc: blocks up to 32 MiB come from the heap instead of
their own mappings, and the heap is trimmed only when 1 GiB sits free at its top. The price is
that the process keeps its peak heap size until it exits, which for a training process is the
size it needs anyway. Elsewhere (macOS, Windows, musl) it does nothing and returns False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20   # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD_BYTES = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Tune glibc malloc for repeated same-size tensor allocations. True if it took effect."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD_BYTES)) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD_BYTES)) == 1)
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
