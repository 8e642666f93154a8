"""status.json: what a run's trainer is doing, for watchers (`cifarlab eval --watch`).

state: running | finished | interrupted | diverged | failed. Written atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..files import atomic_write, pid_alive

STATUS = "status.json"


def write_status(
    run_dir: Path, state: str, step: int, max_steps: int, pid: int | None = None
) -> None:
    record = {"state": state, "step": step, "max_steps": max_steps, "pid": pid or os.getpid(),
              "time": time.time()}  # fmt: skip
    atomic_write(Path(run_dir) / STATUS, json.dumps(record))


def read_status(run_dir: Path) -> dict | None:
    try:
        status = json.loads((Path(run_dir) / STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return status if isinstance(status, dict) and "state" in status else None


def trainer_alive(status: dict) -> bool:
    try:
        return pid_alive(int(status["pid"]))
    except (KeyError, TypeError, ValueError):
        return True  # no usable pid: assume it runs, as before status carried one
