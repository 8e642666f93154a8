"""Choices between two ways of computing the same thing, made by timing both once on this
machine and kept: the faster way here, never one picked by the CPU's name.

A verdict is stored as JSON under the kernel cache's `timings/` folder (CIFARLAB_KERNEL_CACHE,
else ~/.cache/cifarlab/kernels), in a file named by a hash of everything that could change
it: what is timed (the caller's key), the CPU's model and instruction-set flags, the torch
version and the thread count. A process measures under an flock on that file, so the ranks
of a torchrun job time once and the others read the result; and within a process each
verdict is read from disk only once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from .files import atomic_write
from .machine import cpu_description

_known: dict[str, dict] = {}


def timings_folder() -> Path:
    from .models.tutorial_cpu.build import cache_root

    return cache_root() / "timings"


def verdict_path(name: str, key: dict) -> Path:
    described = {"what": name, **key, "cpu": cpu_description(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()}  # fmt: skip
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return timings_folder() / f"{name}-{digest}.json"


def remembered(name: str, key: dict, measure: Callable[[], dict]) -> dict:
    """The verdict `measure()` returned for (name, key) on this machine: from this process's
    memory, from the cache, or measured now and stored. `measure` returns a JSON-able dict."""
    path = verdict_path(name, key)
    if str(path) in _known:
        return _known[str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            verdict = json.loads(path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: measure again
            # Under a forked RNG: measuring (building a network to time it, say) must not
            # move the global generator, or a run's initial weights would depend on whether
            # this machine had timed the choice before.
            with torch.random.fork_rng(devices=[]):
                verdict = measure()
            atomic_write(path, json.dumps(verdict) + "\n")
    _known[str(path)] = verdict
    return verdict


def forget() -> None:
    """Drop this process's memory of verdicts (tests that change the cache folder)."""
    _known.clear()
