"""Process-wide settings that make CPU runs fast. Called by the CLI, never at import."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def configure_allocator() -> bool:
    """Keep freed tensor memory in the process instead of handing it back to the kernel.

    glibc serves each allocation over its mmap threshold with a fresh mapping and trims the
    heap eagerly, so every training step re-faults its ~1 MB activations page by page. On our
    2-core VM that page-fault cost halved the input pipeline's throughput (BENCHMARKS.md).
    Raising both thresholds makes steady-state steps reuse memory. Returns True if applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum on 64-bit
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(ok_trim and ok_mmap)
