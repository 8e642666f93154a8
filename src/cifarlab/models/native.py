"""Native CPU kernels (cpu_kernels.cpp), compiled on first use with PyTorch's C++-extension
builder and cached per machine (under ~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR).

The build needs a C++ compiler, ninja and Python's headers. Where any is missing,
`kernels()` warns once and returns None, and the callers keep their PyTorch
implementation: the same function, slower. CIFARLAB_NATIVE=0 in the environment asks for
that path outright (for A/B measurements).

The kernels are compiled for this CPU (-march=native), so the cache is keyed by the CPU's
model and instruction-set flags: a machine that moves to another CPU builds its own copy
rather than running instructions its new CPU lacks. OpenMP is enabled at compile time but
not linked: the parallel loops run on the OpenMP runtime PyTorch itself loaded, with its
thread count (torch.set_num_threads), rather than a second runtime competing for the cores.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]

_kernels: ModuleType | None = None
_tried = False


def _cpu_tag() -> str:
    """A short hash of what decides which instructions the compiler may use here."""
    described = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                described += line
            if line.startswith("flags"):
                break  # the first processor's entries are enough
    except OSError:
        pass
    return hashlib.sha1(described.encode()).hexdigest()[:10]


def kernels() -> ModuleType | None:
    """The compiled module, or None where it cannot be built (asked once per process)."""
    global _kernels, _tried
    if _tried:
        return _kernels
    _tried = True
    if os.environ.get("CIFARLAB_NATIVE", "1") == "0" or sys.platform == "win32":
        return None
    start = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load

        _kernels = load(f"cifarlab_native_{_cpu_tag()}", [str(SOURCE)], extra_cflags=FLAGS,
                        verbose=False)  # fmt: skip
    except Exception as error:  # a missing compiler, ninja or header: keep the PyTorch path
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if len(reason) > 160:  # a failed build's first line carries the whole compiler command
            reason = reason[:157] + "..."
        warnings.warn(f"native kernels unavailable, using PyTorch's ops instead: {reason}",
                      stacklevel=2)  # fmt: skip
        return None
    seconds = time.perf_counter() - start
    if seconds > 2:  # a build, not a load from the cache: say where the pause went
        print(f"compiled cifarlab's native CPU kernels in {seconds:.0f} s (once per machine)",
              file=sys.stderr)  # fmt: skip
    return _kernels


def serves(x: torch.Tensor) -> bool:
    """Whether the native kernels take this tensor: float32 on the CPU, in eager mode
    (tracing and export need ops they can record), and the kernels built."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32
        and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
        and kernels() is not None
    )  # fmt: skip
