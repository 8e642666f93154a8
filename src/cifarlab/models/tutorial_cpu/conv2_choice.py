"""Whether the tutorial's conv2 goes by Fourier transform (fft_conv.py) or by oneDNN here.

The Fourier route is taken only where it is known to be right and fast:
  - NNPACK is in this PyTorch and runs on this CPU (`torch.backends.nnpack.is_available()`,
    and NNPACK's own initialisation in the kernels);
  - the torch version is one the tests cover (TESTED_TORCH): the kernels call NNPACK through
    a symbol looked up by name with structures copied by hand, so another version could
    change them unseen;
  - it is faster on this machine: both routes are timed once, at the tutorial's shape, and
    the verdict is cached beside the built kernels (build.py), so a CPU where the Fourier
    route is slower never runs it.
Where any of these fails, the reason is said once and oneDNN's convolution serves: the same
function. CIFARLAB_FFT_CONV=0 or =1 skips the timing and forces the answer (for A/B runs and
tests); =1 still needs the route to be available.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from . import build

TESTED_TORCH = ("2.13",)  # major.minor versions CI runs the Fourier route's tests on
SHAPE = (128, 64, 12, 12)  # the tutorial's conv2 input at batch 128
FILTERS = (64, 64, 5, 5)
CHOICE_FILE = "conv2_choice.json"

_unavailable: str | None = None  # why the route cannot run here ("" once found available)
_timed: bool | None = None
_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(f"cifarlab: {message}", file=sys.stderr, flush=True)


def route_available() -> str | None:
    """None if the Fourier route can run here, else why not (found once a process)."""
    global _unavailable
    if _unavailable is None:
        _unavailable = _why_unavailable() or ""
    return _unavailable or None


def _why_unavailable() -> str | None:
    kernels = build.kernels()
    if kernels is None:
        return "the native kernels are not built"
    if not torch.backends.nnpack.is_available() or not kernels.fft_conv_available():
        return "NNPACK is not available in this PyTorch or on this CPU"
    version = ".".join(torch.__version__.split(".")[:2])
    if version not in TESTED_TORCH:
        return (f"conv2's Fourier route is tested with torch {', '.join(TESTED_TORCH)} only "
                f"(this is {torch.__version__})")  # fmt: skip
    return None


def by_fourier() -> bool:
    """Whether conv2 goes by Fourier transform in this process (module docstring)."""
    global _timed
    forced = os.environ.get("CIFARLAB_FFT_CONV")
    if forced == "0":
        return False
    unavailable = route_available()
    if unavailable:
        _say_once(f"conv2 runs on oneDNN: {unavailable}")
        return False
    if forced == "1":
        return True
    if _timed is None:
        _timed = timed_verdict()["fourier"]
    return _timed


def timed_verdict() -> dict:
    """Both routes' time for one forward and backward at SHAPE, from the cache or measured
    (under the build's lock: one process times while the others wait for its verdict)."""
    build.kernels()  # built or loaded first: the timing must not include a build
    with build.entry_lock() as folder:
        path = folder / CHOICE_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        fourier_ms, onednn_ms = _time_both()
        verdict = {"fourier": fourier_ms < onednn_ms, "fourier_ms": round(fourier_ms, 3),
                   "onednn_ms": round(onednn_ms, 3), "threads": torch.get_num_threads()}  # fmt: skip
        path.write_text(json.dumps(verdict) + "\n")
    route = "Fourier transform" if verdict["fourier"] else "oneDNN"
    _say_once(f"conv2 by {route} on this machine (timed: Fourier {fourier_ms:.1f} ms, "
              f"oneDNN {onednn_ms:.1f} ms a forward and backward at batch 128)")  # fmt: skip
    return verdict


def _time_both(repeats: int = 9) -> tuple[float, float]:
    """The fastest of `repeats` forward-and-backward passes of each route, alternating, so
    that other work on the machine slows both alike and the minimum sees through it."""
    from .fft_conv import fourier_conv2d

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator)
    weight = torch.randn(FILTERS, generator=generator) * 0.05
    bias = torch.zeros(FILTERS[0])
    grad = torch.randn(SHAPE[0], FILTERS[0], *SHAPE[2:], generator=generator)

    def fourier() -> None:
        xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
        fourier_conv2d(xs, ws, bias, 2).backward(grad)

    def onednn() -> None:
        xs = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        ws = weight.contiguous(memory_format=torch.channels_last).requires_grad_()
        F.conv2d(xs, ws, bias, padding=2).backward(grad)

    times: dict = {fourier: [], onednn: []}
    for round_ in range(repeats + 2):  # two warm-up rounds: allocations, oneDNN's choices
        for work in (fourier, onednn):
            start = time.perf_counter()
            work()
            if round_ >= 2:
                times[work].append((time.perf_counter() - start) * 1000)
    return min(times[fourier]), min(times[onednn])


def prepare() -> None:
    """Build the kernels and settle conv2's route now, before a clock starts."""
    if build.kernels() is not None:
        by_fourier()
