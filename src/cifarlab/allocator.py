"""Process-wide settings that make CPU runs fast. Called by the CLI, never at import."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes an int


def configure_allocator() -> bool:
    """Keep freed tensor memory in the process instead of handing it back to the kernel.

    PyTorch's CPU allocator has no cache: each tensor is a malloc and a free. glibc serves
    any allocation over its mmap threshold (at most 32 MB) with a fresh mapping, unmapped
    again at free(), and trims the heap eagerly, so every training step faults its buffers
    back in page by page, each page zeroed by the kernel: 740,000 page faults a step of the
    fast recipe at batch 1,024, 30% of its time; half the input pipeline's throughput
    (BENCHMARKS.md). With no mmaps at all and trimming only past 2 GB of free heap top,
    large blocks come from the heap and the next step reuses them. Returns True if applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok_trim = mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    ok_mmap = mallopt(_M_MMAP_MAX, 0)  # glibc still maps when the heap cannot grow
    return bool(ok_trim and ok_mmap)
