"""The native CPU kernels (kernels.cpp): built with PyTorch's C++-extension builder once per
machine and toolchain, and loaded from the cache after that.

`prepare()` is called by every command that runs the tutorial network on the CPU (train,
eval, bench) before its clock starts, so no step and no figure waits for a compile; it says
so when it builds. `kernels()` returns the module, or None where the build cannot happen
(no C++ compiler, ninja or Python headers; CIFARLAB_NATIVE=0 asks for that outright): then
one warning, and the callers keep PyTorch's operators, the same function, slower.

The cache is keyed by everything that changes the build: the CPU's model and instruction-set
flags (the kernels are compiled with -march=native), the torch version, the Python version,
the compiler, the flags and the source. Two virtual environments or torch versions on one
machine therefore keep one entry each instead of rebuilding the same one in turn; and the
entry builds from its own copy of the source, so that two checkouts of the same code share
it too.

One build at a time: every process (every rank of a torchrun job) takes an flock on the
entry first, so the first builds and the others wait and load its result. The kernel drops
an flock when its holder dies, so a build killed halfway cannot block the next start; and
because every builder holds that lock, a `lock` file PyTorch's builder left behind in the
entry (it waits on it forever otherwise) is stale by construction and is removed.

OpenMP is enabled at compile time but not linked: the parallel loops run on the OpenMP
runtime PyTorch itself loaded, with its thread count, rather than a second runtime
competing for the cores.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

from ...machine import cpu_description

SOURCE = Path(__file__).with_name("kernels.cpp")
# -fno-trapping-math: no kernel reads the floating-point exception flags, and without it GCC
# keeps an arithmetic that one arm of a select needs inside a branch (it might trap), which
# only AVX-512's masked instructions vectorize: on AVX2 the fused GELU kernels (part 5) ran
# scalar, 2-6x slower than PyTorch's operators. It allows no reassociation (unlike
# -ffast-math): each value is computed by the same operations in the same order.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]

_kernels: ModuleType | None = None
_tried = False


def enabled() -> bool:
    return os.environ.get("CIFARLAB_NATIVE", "1") != "0" and sys.platform.startswith("linux")


def _compiler() -> str:
    """The C++ compiler PyTorch's builder will call, and its version."""
    compiler = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=10)
        return compiler + " " + (out.stdout.splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError):
        return compiler + " (not found)"


def cache_key() -> str:
    """A short hash of everything that changes the built module."""
    parts = [cpu_description(), torch.__version__, torch.version.git_version or "",
             platform.python_implementation(), platform.python_version(), _compiler(),
             " ".join(FLAGS), hashlib.sha256(SOURCE.read_bytes()).hexdigest()]  # fmt: skip
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("CIFARLAB_KERNEL_CACHE") or Path.home() / ".cache/cifarlab/kernels")


def entry() -> Path:
    """This machine's and toolchain's build folder."""
    return cache_root() / f"cifarlab_native_{cache_key()}"


_held = 0  # this process's depth inside entry_lock (flock would block on itself)


@contextmanager
def entry_lock():
    """Hold the entry's lock (see the module docstring): one builder or timer at a time.
    Re-entrant within a process."""
    global _held
    folder = entry()
    if _held:
        _held += 1
        try:
            yield folder
        finally:
            _held -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
        _held = 1
        try:
            yield folder
        finally:
            _held = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def _built(folder: Path) -> bool:
    return (folder / f"{folder.name}.so").is_file()


def available() -> bool:
    """Whether this process runs the native kernels now: CIFARLAB_NATIVE asked on each call,
    so that setting it to 0 after the kernels loaded (fast_step_profile.py --against-env)
    turns every per-call route off (the fused layers, Winograd) and not only later loads."""
    return enabled() and kernels() is not None


def kernels() -> ModuleType | None:
    """The compiled module, or None where it cannot be built (asked once per process)."""
    global _kernels, _tried
    if _tried:
        return _kernels
    _tried = True
    if not enabled():
        return None
    try:
        _kernels = _load()
    except Exception as error:  # a missing compiler, ninja or header: keep the PyTorch path
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if len(reason) > 160:  # a failed build's first line carries the whole compiler command
            reason = reason[:157] + "..."
        warnings.warn(f"native kernels unavailable, using PyTorch's ops instead: {reason}",
                      stacklevel=2)  # fmt: skip
    return _kernels


def _load() -> ModuleType:
    from torch.utils.cpp_extension import load

    with entry_lock() as folder:
        (folder / "lock").unlink(missing_ok=True)  # PyTorch's baton from a killed build
        building = not _built(folder)
        compiler = os.environ.get("CXX", "c++")
        if building and shutil.which(compiler) is None:
            raise RuntimeError(f"no C++ compiler ({compiler!r}) on PATH")
        if building:
            print("building cifarlab's native CPU kernels for this machine and toolchain "
                  "(once, about 20 s)...", file=sys.stderr, flush=True)  # fmt: skip
            for stale in folder.iterdir():  # a killed build's half-written objects
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        # PyTorch's builder rebuilds whenever the source's path changes, so two checkouts
        # of the same code (a snapshot running an experiment, the working tree's tests)
        # would rebuild the entry in turn: every checkout builds from the entry's own copy.
        source = folder / SOURCE.name
        if not source.is_file():
            shutil.copyfile(SOURCE, source)
        start = time.perf_counter()
        module = load(folder.name, [str(source)], extra_cflags=FLAGS,
                      build_directory=str(folder), verbose=False)  # fmt: skip
        if building:
            print(f"built them in {time.perf_counter() - start:.0f} s: {folder}",
                  file=sys.stderr, flush=True)  # fmt: skip
        return module


def serves(x: torch.Tensor) -> bool:
    """Whether the native kernels take this tensor: float32 on the CPU, in eager mode
    (tracing and export need ops they can record), and the kernels built."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32
        and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
        and kernels() is not None
    )  # fmt: skip
